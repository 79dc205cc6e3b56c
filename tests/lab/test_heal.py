"""`nsm-lab up` keeps the whole system running; `nsm-lab kill` crashes a component and checks
that the system heals (pods keep VF, address and VLAN; pings and the switch audit hold)."""

from __future__ import annotations

import json

import pytest

from lab import components
from lab.topology import build_topology, load_spec
from tests.lab.conftest import leftovers, needs_lab, nsm_lab


@needs_lab
def test_up_runs_the_pods_and_every_crash_heals(prefix: str) -> None:
    info = json.loads(nsm_lab("up", "--prefix", prefix, "-o", "json").stdout)
    assert len(info["pods"]) == 4 and all(r["ok"] for r in info["pods"]), info["pods"]
    assert set(info["components"]) == set(components.ORDER)
    st = json.loads(nsm_lab("status", "--prefix", prefix, "-o", "json").stdout)
    assert st["ok"] and [c["name"] for c in st["checks"] if c["what"] == "component"] == list(
        components.ORDER
    )
    before = {r["pod"]: (r["vf_pci"], r["ip"], r["vlan"]) for r in st["pods"]}
    for name in ("nsmgr", "torshim", "registry", "device-plugin"):
        res = json.loads(nsm_lab("kill", name, "--prefix", prefix, "-o", "json").stdout)
        assert res["ok"], res["checks"]
        assert res["old_pid"] != res["new_pid"]
        assert {r["pod"]: (r["vf_pci"], r["ip"], r["vlan"]) for r in res["pods"]} == before
        assert res["matrix"] and all(m["ok"] for m in res["matrix"])
    nsm_lab("down", "--prefix", prefix)
    assert leftovers(prefix) == []


@needs_lab
def test_kill_needs_a_running_lab_with_components(prefix: str) -> None:
    res = nsm_lab("kill", "nsmgr", "--prefix", prefix, check=False)
    assert res.returncode == 1 and f"no lab {prefix} is up" in res.stderr
    nsm_lab("up", "--bare", "--prefix", prefix)
    res = nsm_lab("kill", "nsmgr", "--prefix", prefix, check=False)
    assert res.returncode == 1 and "--bare" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("component", ["node", "sshd", "x"])
def test_only_our_components_can_be_killed(component: str) -> None:
    res = nsm_lab("kill", component, "--prefix", "zz", check=False)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_a_component_state_dir_is_derived_from_the_prefix() -> None:
    lab = build_topology(load_spec(None), "abc")
    paths = components.Paths(lab.state_dir)
    assert paths.nsm_sock.startswith(lab.state_dir) and len(paths.pod_resources_sock) <= 107
