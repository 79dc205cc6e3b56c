"""`nsm-lab kill <component>`: crash one component of a running lab and watch the system heal.

The component gets SIGKILL (a crash: no cleanup of its own), then is started again with the same
command line, as kubelet restarts a crashed container. Healed means: the restarted process is
ready, every pod still has its VF, address and VLAN as before the kill, the ping matrix still
holds, and `torshim audit` is clean. What each component must do for that:

- nsmgr: replay its journal, find the pods again (API, pod-resources, CRI), keep the VFs where
  they are (no detach/re-attach: the rows must be unchanged);
- torshim: reconcile the switch from its store on start, register in the registry again;
- registry: come back with its SQLite store; torshim's registration refresh finds it again;
- device-plugin: register with the kubelet stand-in again and report the same devices.

The kubelet/API stand-in (`node`) is not ours to crash: it is the cluster, whose state lives in
etcd on a real one.
"""

from __future__ import annotations

import time
from typing import Any

from lab import apiclient, build, components, demo
from lab.scenario import Scenario, load_scenario
from lab.topology import Lab

KILLABLE = ("nsmgr", "torshim", "registry", "device-plugin")
HEAL_TIMEOUT = 30.0


def snapshot(lab: Lab, scenario: Scenario) -> list[dict[str, Any]]:
    """The pods' rows as the kernel and the TOR show them, plus nsmgr's connections."""
    api = apiclient.api_url(lab.state_dir)
    objects = {
        f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in apiclient.list_pods(api)
    }
    conns = demo.wait_connected(lab, scenario, demo.running(objects), timeout=0.5)
    return demo.pod_rows(lab, scenario, objects, conns)


def _key(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["pod"], r["service"], r["vf_pci"], r["ip"], r["tor_port"], r["vlan"], r["ok"])
                  for r in rows)  # fmt: skip


def kill(lab: Lab, name: str, progress: build.Progress = build._quiet) -> dict[str, Any]:
    """Kill `name`, start it again, wait for the system to heal; the result as data."""
    if name not in KILLABLE:
        raise build.LabError(f"cannot kill {name!r}: one of {', '.join(KILLABLE)}")
    path = components.scenario_path(lab)
    if path is None:
        raise build.LabError(f"lab {lab.prefix} runs no components (it was made with --bare)")
    scenario = load_scenario(path)
    old_pid = components.pid_of(lab, name)
    if old_pid is None:
        raise build.LabError(f"{name} is not running in lab {lab.prefix}")
    progress("reading the pods before the kill")
    before = snapshot(lab, scenario)
    progress(f"SIGKILL {name} (pid {old_pid})")
    t0 = time.monotonic()
    components.stop(lab, name, sig="KILL")
    killed_at = time.monotonic()
    progress(f"starting {name} again")
    new_pid = components.start(lab, name)
    components.wait_ready(lab, name, scenario)
    ready = time.monotonic() - killed_at
    progress("waiting for the pods, the switch and the audit to agree again")
    deadline = time.monotonic() + HEAL_TIMEOUT
    after: list[dict[str, Any]] = []
    matrix: list[dict[str, Any]] = []
    audit = (False, "not run")
    while True:
        after = snapshot(lab, scenario)
        same = _key(after) == _key(before)
        if same:
            matrix = demo.ping_matrix(lab, scenario, after)
            audit = demo.torshim_audit(lab)
            if all(m["ok"] for m in matrix) and audit[0]:
                break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    healed = time.monotonic() - killed_at
    checks = {
        "restarted": {"ok": True, "detail": f"pid {old_pid} -> {new_pid}"},
        "pods_unchanged": {
            "ok": _key(after) == _key(before),
            "detail": "every pod kept its VF, address and VLAN"
            if _key(after) == _key(before)
            else "; ".join(r["pod"] + ": " + (r["problem"] or "changed") for r in after),
        },
        "ping_matrix": {
            "ok": bool(matrix) and all(m["ok"] for m in matrix),
            "detail": f"{sum(m['ok'] for m in matrix)}/{len(matrix)} as expected",
        },
        "torshim_audit": {"ok": audit[0], "detail": audit[1]},
    }
    return {
        "prefix": lab.prefix,
        "component": name,
        "old_pid": old_pid,
        "new_pid": new_pid,
        "timings": {
            "ready": round(ready, 3),
            "healed": round(healed, 3),
            "total": round(time.monotonic() - t0, 3),
        },
        "checks": checks,
        "pods": after,
        "matrix": matrix,
        "ok": all(c["ok"] for c in checks.values()),
    }
