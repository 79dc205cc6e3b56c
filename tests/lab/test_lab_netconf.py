"""`nsm-lab up --switch netconf`: netconfd with the OpenConfig modules and its sshd in the TOR
netns, the TOR agent as a recorded process, torshim's real `openconfig` driver steering the data
path; and `down` removing it all, pod netns included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from lab import build, netconf_tor, netconfd
from lab.cli import main
from lab.topology import SpecError, build_topology, load_spec, names_for
from tests.lab.conftest import REPO, lab_processes, leftovers, needs_lab, needs_netconf_lab, nsm_lab
from tests.lab.conftest import ping as _ping
from tests.lab.conftest import wait_until as _wait
from torshim import validate
from torshim.config import load_config
from torshim.drivers.base import driver_class
from torshim.errors import ValidationError
from torshim.model import PortConfig

# -- pure: names, options, the startup config ---------------------------------------------------


def test_switch_flavour_in_the_topology():
    lab = build_topology(load_spec(), "abc", "/tmp/x")
    assert (lab.switch, lab.torshim_driver) == ("linux", "linux")
    lab = build_topology(load_spec(), "abc", "/tmp/x", switch="netconf")
    assert (lab.switch, lab.torshim_driver, lab.netconf_user) == ("netconf", "openconfig", "abc-nc")
    assert lab.to_dict()["switch"] == "netconf"
    assert names_for("abc").pod_ns_prefix == "abc-pod-"
    with pytest.raises(SpecError, match="invalid switch 'ios'"):
        build_topology(load_spec(), "abc", switch="ios")


def test_cli_refuses_an_unknown_switch(capsys):
    assert main(["up", "--switch", "ios", "--prefix", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'ios'" in err[0]


def test_lab_ports_are_netconf_interfaces():
    ports = [vf.tor_port for vf in build_topology(load_spec()).vfs]
    assert ports == [f"swp{i}" for i in range(1, 7)]
    assert [validate.interface(p) for p in ports] == ports  # torshim accepts them
    xml = netconfd.startup_xml(ports)
    assert all(f"<name>{p}</name>" in xml for p in ports)


def test_yang_dir_from_env_or_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(netconfd.YANG_ENV, str(tmp_path))
    with pytest.raises(netconfd.NetconfdError, match=f"set {netconfd.YANG_ENV} to") as e:
        netconfd.find_yang_dir()
    assert "\n" not in str(e.value)
    (tmp_path / "openconfig-vlan.yang").write_text("module openconfig-vlan {}\n")
    assert netconfd.find_yang_dir() == tmp_path


def test_netconf_sshd_only_serves_netconf():
    conf = netconfd.sshd_config("10.0.0.2", 830, "/k", "/p", "/a", "u1", "/s")
    assert "ForceCommand /usr/sbin/netconf-subsystem --ncxserver-sockname=830@/s" in conf
    assert "ListenAddress 10.0.0.2\n" in conf and "PasswordAuthentication no" in conf
    assert netconfd.known_hosts_line("10.0.0.2", 830, "ssh-ed25519 AAA c") == (
        "[10.0.0.2]:830 ssh-ed25519 AAA\n"
    )


def test_agent_port_map_and_bad_arguments(capsys):
    assert netconf_tor.parse_port_map(["swp1,swp2", "Ethernet1/3=swp3"]) == {
        "swp1": "swp1",
        "swp2": "swp2",
        "Ethernet1/3": "swp3",
    }
    for bad in (["swp1;reboot"], [","]):
        with pytest.raises((ValueError, ValidationError)):
            netconf_tor.parse_port_map(bad)
    rc = netconf_tor.main(
        ["--config", "/nonexistent.yaml", "--switch", "s", "--netns", "n", "--ports", "swp1"]
    )
    assert rc == 2
    assert capsys.readouterr().err.strip().startswith("netconf_tor: /nonexistent.yaml")


# -- for real -----------------------------------------------------------------------------------


def _master(ns: str, dev: str) -> str | None:
    return build.link_names(ns)[dev].get("master")


def _failed(prefix: str) -> list[str]:
    return [c["what"] for c in build.status(prefix)["checks"] if not c["ok"]]


@pytest.mark.netns
@needs_netconf_lab
def test_netconf_tor_data_path_with_the_torshim_openconfig_driver(prefix):
    info = json.loads(
        nsm_lab("up", "--bare", "--prefix", prefix, "--switch", "netconf", "-o", "json").stdout
    )
    tor = info["tor"]
    assert (tor["switch"], tor["driver"], tor["port"]) == ("netconf", "openconfig", 830)
    assert tor["username"] == f"{prefix}-nc"
    with open(os.path.join(info["state_dir"], "lab.json")) as f:
        assert json.load(f)["tor"] == tor
    st = json.loads(nsm_lab("status", "--prefix", prefix, "-o", "json").stdout)
    assert st["ok"], st["checks"]
    assert {"netconfd", "sshd", "tor-agent", "reachable"} <= {c["what"] for c in st["checks"]}
    assert "NETCONF hello" in next(c for c in st["checks"] if c["what"] == "reachable")["detail"]

    lab = build_topology(load_spec(), prefix, switch="netconf")
    cfg = load_config(lab.torshim_config)
    params = cfg.switch_params(lab.tor_name)
    assert (params.driver, params.host, params.port) == ("openconfig", tor["address"], 830)
    assert params.host_key_checking and params.known_hosts and params.key_file
    driver = driver_class("openconfig")(params)
    a, b = lab.pfs[0].vfs[0], lab.pfs[1].vfs[0]  # a 100G VF and a 10G VF
    sleeper = None
    try:
        driver.converge(
            {a.tor_port: PortConfig(a.tor_port, "access", 100),
             b.tor_port: PortConfig(b.tor_port, "access", 100)}
        )  # fmt: skip
        # the agent follows the commit onto the bridges of the TOR netns
        assert _wait(lambda: _master(lab.tor_ns, a.tor_port) == "br-v100")
        assert _wait(lambda: _master(lab.tor_ns, b.tor_port) == "br-v100")
        assert _master(lab.tor_ns, lab.pfs[0].vfs[1].tor_port) is None
        # both VF netdevs are in the node netns: give each its own pod netns, named as the lab
        # names pods, so that `down` has to find and remove them
        pods = []
        for vf, addr, pod in ((a, "10.79.0.1/24", "default.a"), (b, "10.79.0.2/24", "default.b")):
            ns = f"{lab.pod_ns_prefix}{pod}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", lab.node_ns, "link", "set", vf.netdev, "netns", ns],
                           check=True)  # fmt: skip
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", vf.netdev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", vf.netdev, "up"], check=True)
            pods.append(ns)
        assert _ping(pods[0], "10.79.0.2")
        driver.converge({b.tor_port: PortConfig(b.tor_port, "access", 200)})
        assert _wait(lambda: _master(lab.tor_ns, b.tor_port) == "br-v200")
        assert _master(lab.tor_ns, a.tor_port) == "br-v100"
        assert not _ping(pods[0], "10.79.0.2")

        st = build.status(prefix)  # VFs handed to pods still count; the pods are listed
        assert st["ok"], st["checks"]
        assert next(c for c in st["checks"] if c["what"] == "pods")["detail"] == ", ".join(pods)
        # a process in a pod netns, and a recorded process step (as later lab steps make them)
        sleeper = subprocess.Popen(["ip", "netns", "exec", pods[0], "sleep", "300"])
        recorded = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)", lab.state_dir]
        )
        st_file = lab.state_file
        with open(st_file) as f:
            data = json.load(f)
        data["steps"].append({"kind": "process", "pid": recorded.pid, "what": "test"})
        with open(st_file, "w") as f:
            json.dump(data, f)
    finally:
        driver.close()

    down = json.loads(nsm_lab("down", "--prefix", prefix, "-o", "json").stdout)["removed"]
    assert {f"netns {p}" for p in pods} | {f"user {prefix}-nc", f"netns {prefix}-tor"} <= set(down)
    assert {f"process {tor[k]}" for k in ("netconfd_pid", "sshd_pid", "agent_pid")} <= set(down)
    assert {f"process {sleeper.pid}", f"process {recorded.pid}"} <= set(down)
    assert sleeper.wait(5) and recorded.wait(5)  # killed by a signal
    assert leftovers(prefix) == []


@pytest.mark.netns
@needs_netconf_lab
def test_status_sees_each_netconf_piece_die(prefix):
    info = build.up(build_topology(load_spec(), prefix, switch="netconf"))
    tor = info["tor"]
    assert build.status(prefix)["ok"]
    os.kill(tor["agent_pid"], signal.SIGTERM)  # the agent ends cleanly on SIGTERM
    assert _wait(lambda: not build.pid_alive(tor["agent_pid"]))
    assert _failed(prefix) == ["tor-agent"]
    os.kill(tor["netconfd_pid"], signal.SIGKILL)
    assert _wait(lambda: not build.pid_alive(tor["netconfd_pid"]))
    assert _failed(prefix) == ["netconfd", "tor-agent", "reachable"]
    build.destroy(prefix)
    assert leftovers(prefix) == []


@pytest.mark.netns
@needs_netconf_lab
def test_netconf_failure_and_interrupt_tear_down(prefix, monkeypatch):
    lab = build_topology(load_spec(), prefix, switch="netconf")
    for exc in (build.LabError("boom"), KeyboardInterrupt()):

        def fail(*_a: object, exc: BaseException = exc) -> int:
            assert lab_processes(lab.state_dir), "netconfd and sshd should run by now"
            raise exc

        monkeypatch.setattr(build, "_start_agent", fail)  # after netconfd, sshd and the user
        with pytest.raises(type(exc)):
            build.up(lab)
        assert leftovers(prefix) == []


@pytest.mark.netns
@needs_lab
def test_netconf_without_yang_modules_says_how_to_set_them(prefix, tmp_path):
    res = nsm_lab("up", "--prefix", prefix, "--switch", "netconf", check=False,
                  env={netconfd.YANG_ENV: str(tmp_path)})  # fmt: skip
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"set {netconfd.YANG_ENV}" in lines[0], res.stderr
    assert leftovers(prefix) == []


@pytest.mark.netns
@needs_netconf_lab
def test_netconf_and_linux_labs_side_by_side(prefix, prefix2):
    a = build.up(build_topology(load_spec(), prefix, switch="netconf"))
    b = build.up(build_topology(load_spec(), prefix2))
    assert (a["tor"]["switch"], b["tor"]["switch"]) == ("netconf", "linux")
    assert build.status(prefix)["ok"] and build.status(prefix2)["ok"]
    build.destroy(prefix)
    assert leftovers(prefix) == []
    assert build.status(prefix2)["ok"]
    # and up again over a netconf lab with no state file: cleanup goes by the names
    build.up(build_topology(load_spec(), prefix, switch="netconf"))
    os.unlink(os.path.join(a["state_dir"], "state.json"))
    removed = build.destroy(prefix)
    assert {f"netns {prefix}-tor", f"user {prefix}-nc"} <= set(removed)
    assert leftovers(prefix) == []


def test_agent_module_runs(tmp_path):
    """`python -m lab.netconf_tor --help` works from anywhere (as build starts it)."""
    res = subprocess.run([sys.executable, "-m", "lab.netconf_tor", "--help"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0 and "--ready-file" in res.stdout
