"""The lab for real: namespaces, veths, a user, sshd; up -> status -> down, leftovers, two labs,
and traffic through the TOR driven by torshim's own `linux` driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab import build
from lab.cli import main
from lab.topology import build_topology, load_spec
from tests.conftest import netns  # noqa: F401 - a fixture
from tests.lab.conftest import REPO, leftovers, needs_lab, nsm_lab
from torshim.config import load_config
from torshim.drivers.base import driver_class
from torshim.model import PortConfig

pytestmark = [pytest.mark.netns, needs_lab]


def test_round_trip_as_subprocesses(prefix):
    up = json.loads(nsm_lab("up", "--bare", "--prefix", prefix, "-o", "json").stdout)
    assert [len(pf["vfs"]) for pf in up["pfs"]] == [4, 2]
    assert up["pfs"][1]["vfs"][1] == {
        "index": 1,
        "pci_address": "0000:5e:02.1",
        "netdev": "ens2f0v1",
        "mac": "02:00:5e:02:01:01",
        "tor_port": "swp6",
    }
    st = json.loads(nsm_lab("status", "--prefix", prefix, "-o", "json").stdout)
    assert st["ok"], st["checks"]
    assert {c["what"] for c in st["checks"]} >= {"netns", "vf", "link", "sshd", "reachable"}
    # the table forms
    assert "swp6" in nsm_lab("status", "--prefix", prefix).stdout
    down = json.loads(nsm_lab("down", "--prefix", prefix, "-o", "json").stdout)
    assert f"netns {prefix}-tor" in down["removed"] and f"user {prefix}-sw" in down["removed"]
    assert leftovers(prefix) == []
    again = nsm_lab("down", "--prefix", prefix)
    assert "nothing to remove" in again.stdout
    gone = nsm_lab("status", "--prefix", prefix, "-o", "json", check=False)
    assert gone.returncode == 1 and not json.loads(gone.stdout)["present"]


def test_round_trip_in_process(prefix, capsys):
    lab = build_topology(load_spec(), prefix)
    info = build.up(lab)
    assert info["cleaned"] == []
    # the fake sysfs names the very netdevs that exist in the node netns
    node_links = build.link_names(lab.node_ns)
    for vf in lab.vfs:
        net = os.listdir(os.path.join(lab.sysfs, "bus/pci/devices", vf.pci_address, "net"))
        assert net == [vf.netdev]
        assert node_links[vf.netdev]["address"] == vf.mac
    assert main(["status", "--prefix", prefix]) == 0
    assert "reachable" in capsys.readouterr().out
    os.kill(info["tor"]["sshd_pid"], signal.SIGKILL)  # status notices a dead sshd
    st = build.status(prefix)
    assert not st["ok"] and [c["what"] for c in st["checks"] if not c["ok"]] == [
        "sshd",
        "reachable",
    ]
    assert main(["down", "--prefix", prefix]) == 0
    assert leftovers(prefix) == []


def test_failure_and_interrupt_tear_down(prefix, monkeypatch):
    lab = build_topology(load_spec(), prefix)
    for exc in (build.LabError("boom"), KeyboardInterrupt()):

        def fail(exc=exc):
            raise exc

        monkeypatch.setattr(build, "_free_subnet", fail)  # after netns, veths and sysfs exist
        with pytest.raises(type(exc)):
            build.up(lab)
        assert leftovers(prefix) == []


def test_up_over_a_killed_run_cleans_its_leftovers(prefix):
    state = os.path.join(build_topology(load_spec(), prefix).state_dir, "state.json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "up", "--prefix", prefix],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # kill it once it has made something of the TOR
        data = build.read_state(os.path.dirname(state)) or {}
        if any(s["kind"] == "user" for s in data.get("steps", [])):
            break
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    assert leftovers(prefix), "the killed run left nothing to clean"
    up = json.loads(nsm_lab("up", "--bare", "--prefix", prefix, "-o", "json").stdout)
    assert any(c.startswith("netns ") for c in up["cleaned"])
    assert build.status(prefix)["ok"]
    # and with no state file at all, cleanup goes by the prefix's names
    for p in build.netns_pids(f"{prefix}-tor"):
        os.kill(p, signal.SIGKILL)  # a crash that took its sshd down too
    os.unlink(state)
    removed = build.destroy(prefix)
    assert {f"netns {prefix}-node", f"netns {prefix}-tor", f"user {prefix}-sw"} <= set(removed)
    assert leftovers(prefix) == []


def test_two_labs_side_by_side(prefix, prefix2):
    a = build.up(build_topology(load_spec(), prefix))
    b = build.up(build_topology(load_spec(), prefix2))
    assert a["tor"]["address"] != b["tor"]["address"]
    assert build.status(prefix)["ok"] and build.status(prefix2)["ok"]
    build.destroy(prefix)
    assert leftovers(prefix) == []
    assert build.status(prefix2)["ok"]


def _ping(ns: str, addr: str) -> bool:
    res = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", "-q", addr],
                         capture_output=True)  # fmt: skip
    return res.returncode == 0


def test_data_path_through_the_tor_with_the_torshim_linux_driver(prefix, netns):  # noqa: F811
    lab = build_topology(load_spec(), prefix)
    build.up(lab)
    params = load_config(lab.torshim_config).switch_params(lab.tor_name)
    driver = driver_class("linux")(params)
    a, b = lab.pfs[0].vfs[0], lab.pfs[1].vfs[0]  # a 100G VF and a 10G VF
    try:
        driver.converge(
            {a.tor_port: PortConfig(a.tor_port, "access", 100),
             b.tor_port: PortConfig(b.tor_port, "access", 100)}
        )  # fmt: skip
        bridges = build.link_names(lab.tor_ns)
        assert bridges[a.tor_port]["master"] == bridges[b.tor_port]["master"] == "br-v100"
        pods = []
        for vf, addr in ((a, "10.77.0.1/24"), (b, "10.77.0.2/24")):
            pod = netns()
            subprocess.run(["ip", "-n", lab.node_ns, "link", "set", vf.netdev, "netns", pod],
                           check=True)  # fmt: skip
            subprocess.run(["ip", "-n", pod, "addr", "add", addr, "dev", vf.netdev], check=True)
            subprocess.run(["ip", "-n", pod, "link", "set", vf.netdev, "up"], check=True)
            pods.append(pod)
        assert _ping(pods[0], "10.77.0.2")
        driver.converge({b.tor_port: PortConfig(b.tor_port, "access", 200)})
        assert build.link_names(lab.tor_ns)[b.tor_port]["master"] == "br-v200"
        assert not _ping(pods[0], "10.77.0.2")
    finally:
        driver.close()


def test_ctrl_c_during_up_tears_down(prefix):
    state_dir = build_topology(load_spec(), prefix).state_dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "up", "--prefix", prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = build.read_state(state_dir) or {}
        if any(s["kind"] == "netns" for s in data.get("steps", [])):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip("up finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["nsm-lab: interrupted; what was built has been removed"]
    assert leftovers(prefix) == []
