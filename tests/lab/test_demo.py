"""`nsm-lab demo` end to end: every component a real process, pods as netns, pings on the wire."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab import build, components, demo
from lab.scenario import load_scenario
from lab.topology import build_topology, load_spec
from tests.lab.conftest import REPO, leftovers, needs_lab, nsm_lab
from tests.torshim.netconf_server import needs_netconfd

KEYS = {"pods", "matrix", "timings", "teardown"}


def check_success(doc: dict, prefix: str) -> None:
    assert set(doc) >= KEYS and doc["ok"] is True, doc.get("errors")
    scn = load_scenario()
    assert {r["pod"] for r in doc["pods"]} == {p.key for p in scn.pods}
    svcs = {s.name: s for s in scn.services}
    for row in doc["pods"]:
        assert row["ok"] and row["phase"] == "Running", row
        assert row["vlan"] == svcs[row["service"]].vlan  # read from the TOR's bridges
        assert row["mtu"] == svcs[row["service"]].mtu  # read from the pod's netns
        assert row["vf_pci"] and row["tor_port"] and row["ip"]
    # every VF went to a different pod, and 100g pods got the E810's VFs
    assert len({r["vf_pci"] for r in doc["pods"]}) == len(doc["pods"])
    for row in doc["pods"]:
        assert row["vf_pci"].startswith("0000:3b:" if "100g" in row["resource"] else "0000:5e:")
    n = len(doc["pods"])
    assert len(doc["matrix"]) == n * (n - 1)
    assert {m["expected"] for m in doc["matrix"]} == {True, False}  # both kinds were tried
    for m in doc["matrix"]:
        assert m["ok"] and m["reached"] == m["expected"], m
    assert all(c["ok"] for c in doc["teardown"].values()), doc["teardown"]
    assert doc["audit"]["ok"], doc["audit"]  # while the pods were attached
    assert set(doc["teardown"]) >= {
        "vfs_restored",
        "tor_ports_released",
        "torshim_audit",
        "nothing_left",
    }
    for phase in ("lab", "components", "pods", "connect", "ping", "teardown", "total"):
        assert doc["timings"][phase] >= 0
    assert leftovers(prefix) == []


@needs_lab
def test_demo_runs_the_seed_story_and_leaves_nothing(prefix: str) -> None:
    res = nsm_lab("demo", "--prefix", prefix, "-o", "json")
    check_success(json.loads(res.stdout), prefix)


@needs_lab
def test_the_table_output_shows_pods_matrix_and_teardown(prefix: str) -> None:
    res = nsm_lab("demo", "--prefix", prefix)
    for text in ("myns/web-1", "10.60.", "swp", "MTU", "expected", "torshim_audit", "total"):
        assert text in res.stdout, res.stdout
    assert "all expectations held" in res.stdout


@needs_lab
@needs_netconfd
def test_demo_on_a_netconf_managed_tor(prefix: str) -> None:
    res = nsm_lab("demo", "--switch", "netconf", "--prefix", prefix, "-o", "json")
    doc = json.loads(res.stdout)
    assert (doc["switch"], doc["driver"]) == ("netconf", "openconfig")
    check_success(doc, prefix)


@needs_lab
def test_a_tor_that_leaks_vlans_fails_the_demo(prefix: str) -> None:
    """Put every VF's TOR port in one bridge before the pings: the demo must notice (pods of
    different services now reach each other, the audit sees drift) and say it failed."""

    def leak(lab) -> None:  # type: ignore[no-untyped-def]
        lines = ["link add br-leak type bridge", "link set br-leak up"]
        lines += [f"link set {vf.tor_port} master br-leak" for vf in lab.vfs]
        build._ip_batch(lines, lab.tor_ns)

    lab = build_topology(load_spec(None), prefix)
    doc = demo.run(lab, load_scenario(), before_ping=leak)
    assert doc["ok"] is False
    crossed = [m for m in doc["matrix"] if not m["expected"]]
    assert crossed and all(m["reached"] for m in crossed), crossed
    assert not doc["audit"]["ok"] and "drift" in doc["audit"]["detail"], doc["audit"]
    # closing the connections put the ports back as torshim wants them: clean after teardown
    assert doc["teardown"]["torshim_audit"]["ok"], doc["teardown"]
    assert leftovers(prefix) == []


@needs_lab
def test_a_pod_the_node_cannot_admit_is_reported(prefix: str, tmp_path: Path) -> None:
    """Five pods ask for a 100G VF, the lab's E810 has four: one pod Fails admission, the demo
    says which and why, exits 1, and still tears everything down."""
    base = Path(load_scenario().source).read_text()
    web1 = base.split("---\n")[2]  # a 100G pod; the scenario has three of them
    assert "example.com/100g" in web1
    extra = [web1.replace("name: web-1", f"name: web-{n}") for n in (8, 9)]
    (tmp_path / "pods.yaml").write_text("---\n".join([base, *extra]))
    res = nsm_lab("demo", "--prefix", prefix, "--pods", str(tmp_path / "pods.yaml"), "-o",
                  "json", check=False)  # fmt: skip
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    failed = [r for r in doc["pods"] if not r["ok"]]
    assert len(failed) == 1 and failed[0]["phase"] == "Failed", (doc["errors"], doc["pods"])
    assert "example.com/100g" in failed[0]["problem"]
    assert all(r["ok"] for r in doc["pods"] if r not in failed)
    assert all(c["ok"] for c in doc["teardown"].values()), doc["teardown"]
    assert leftovers(prefix) == []


@needs_lab
def test_a_bad_pods_file_is_one_line_and_builds_nothing(prefix: str, tmp_path: Path) -> None:
    (tmp_path / "pods.yaml").write_text("kind: Pod\nmetadata: {name: Bad}\n")
    res = nsm_lab("demo", "--prefix", prefix, "--pods", str(tmp_path / "pods.yaml"), check=False)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Bad" in res.stderr
    assert not (Path(build_topology(load_spec(None), prefix).state_dir)).exists()


@needs_lab
def test_a_component_that_dies_at_start_fails_the_demo_cleanly(prefix: str, monkeypatch) -> None:
    """nsmgr exits at once: the demo says which component and why, and still removes it all."""
    real = components.write_configs

    def broken(lab, scenario):  # type: ignore[no-untyped-def]
        argvs = real(lab, scenario)
        argvs["nsmgr"] = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)",
                          lab.state_dir]  # fmt: skip
        return argvs

    monkeypatch.setattr(components, "write_configs", broken)
    lab = build_topology(load_spec(None), prefix)
    doc = demo.run(lab, load_scenario())
    assert doc["ok"] is False
    assert any("nsmgr exited" in e and "boom" in e for e in doc["errors"]), doc["errors"]
    assert doc["teardown"]["nothing_left"]["ok"]
    assert leftovers(prefix) == []


@needs_lab
def test_ctrl_c_during_the_demo_tears_everything_down(prefix: str) -> None:
    state_dir = build_topology(load_spec(None), prefix).state_dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "demo", "--prefix", prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # once nsmgr runs, the pods are next
            if components.pid_of(build_topology(load_spec(None), prefix), "nsmgr"):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("nsmgr never started")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(state_dir)
    assert leftovers(prefix) == []
