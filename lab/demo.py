"""`nsm-lab demo`: the seed's story on one machine, checked end to end.

Phases (each timed): build the lab, start the components, create the scenario's pods through the
API stand-in (the kubelet stand-in admits them: netns, Allocate), wait until nsmgr has attached
every pod's VF, read what each pod got (from the pod's netns and the TOR's bridges, not from what
the components say), ping every pod from every other, delete the pods, check the teardown (VFs
back in the node netns as they were, TOR ports released, `torshim audit` clean), stop everything,
remove the lab, and check that nothing of it is left.

The result is one dict: `pods`, `matrix` (`from`, `to`, `expected`, `ok`), `timings`,
`teardown`, `ok`. `ok` holds only when every expectation held.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from lab import apiclient, build, components
from lab.components import Paths
from lab.scenario import LabPod, Scenario, expected_reachable
from lab.topology import Lab
from torshim.drivers.linux import BRIDGE_PREFIX

CONNECT_TIMEOUT = 30.0
BUILT_MTU = 1500  # what `up` gives every VF netdev (the veth default)
DELETE_TIMEOUT = 20.0


def kept_logs(prefix: str) -> str:
    """Where a failed run leaves its components' logs (the state dir itself is removed)."""
    return f"/tmp/nsm-lab-{prefix}-logs"


class Timer:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - t0, 3)


# -- what is there (read from the kernel, not from the components) ------------------------------


def pod_netns(lab: Lab, pod: LabPod) -> str:
    return f"{lab.pod_ns_prefix}{pod.namespace}.{pod.name}"


def addresses(ns: str, ifname: str) -> list[str]:
    res = build.run("ip", "-n", ns, "-j", "-4", "addr", "show", "dev", ifname, check=False)
    if res.returncode != 0:
        return []
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(res.stdout or "[]")
        for a in link.get("addr_info", [])
    ]


def tor_vlans(lab: Lab) -> dict[str, int | None]:
    """Each TOR port's access VLAN, from the bridge it is in (`br-v<vlan>`), or None."""
    out: dict[str, int | None] = {}
    n = len(BRIDGE_PREFIX)
    links = build.link_names(lab.tor_ns)
    for vf in lab.vfs:
        master = (links.get(vf.tor_port) or {}).get("master") or ""
        out[vf.tor_port] = (
            int(vlan)
            if master.startswith(BRIDGE_PREFIX) and (vlan := master[n:]).isdigit()
            else None
        )
    return out


def connections(lab: Lab) -> list[Any]:
    """nsmgr's connections, through its NSM MonitorConnection API (as `nsmgr list` reads them)."""
    from nsmgr.server import info_from_proto
    from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
    from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"unix://{Paths(lab.state_dir).nsm_sock}") as ch:
        stream = pb_grpc.MonitorConnectionStub(ch).MonitorConnections(
            pb.MonitorScopeSelector(), timeout=5
        )
        try:
            event = next(stream)
        finally:
            stream.cancel()
    return [info_from_proto(c) for c in event.connections.values()]


def _wait(what: str, done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    return done()


# -- phases -------------------------------------------------------------------------------------


def create_pods(lab: Lab, scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Create every pod, wait until each is Running or Failed; their API objects by key."""
    api = apiclient.api_url(lab.state_dir)
    for pod in scenario.pods:
        manifest = json.loads(json.dumps(pod.manifest))
        manifest["spec"]["nodeName"] = lab.node_name  # as the scheduler would bind it
        apiclient.create_pod(api, manifest)
    keys = {p.key for p in scenario.pods}
    seen: dict[str, dict[str, Any]] = {}

    def settled() -> bool:
        for obj in apiclient.list_pods(api):
            meta = obj["metadata"]
            seen[f"{meta['namespace']}/{meta['name']}"] = obj
        return all(
            (seen.get(k) or {}).get("status", {}).get("phase") in ("Running", "Failed")
            for k in keys
        )

    _wait("pods", settled, CONNECT_TIMEOUT)
    return seen


def wait_connected(
    lab: Lab, scenario: Scenario, running: set[str], timeout: float = CONNECT_TIMEOUT
) -> dict[str, list[Any]]:
    """nsmgr's attached connections per pod key, once every running pod has all of its own."""
    want = {p.key: len(p.services) for p in scenario.pods if p.key in running}
    by_pod: dict[str, list[Any]] = {}

    def done() -> bool:
        by_pod.clear()
        try:
            conns = connections(lab)
        except grpc.RpcError:
            return False
        for c in conns:
            if c.pod is not None and c.state == "attached":
                by_pod.setdefault(f"{c.pod.namespace}/{c.pod.name}", []).append(c)
        return all(len(by_pod.get(k, [])) >= n for k, n in want.items())

    _wait("connections", done, timeout)
    return by_pod


def running(objects: dict[str, dict[str, Any]]) -> set[str]:
    return {k for k, o in objects.items() if (o.get("status") or {}).get("phase") == "Running"}


def start_scenario(
    lab: Lab, scenario: Scenario, timer: Timer, progress: build.Progress = build._quiet
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """On a built lab: start the components, create the pods, wait for their VFs; returns how
    long each component took to be ready, and the pods' rows."""
    with timer.phase("components"):
        took = components.start_all(lab, scenario, progress)
        components.remember_scenario(lab, scenario.source)
    with timer.phase("pods"):
        progress("creating pods")
        objects = create_pods(lab, scenario)
    with timer.phase("connect"):
        progress("waiting for nsmgr to attach the VFs")
        conns = wait_connected(lab, scenario, running(objects))
    return took, pod_rows(lab, scenario, objects, conns)


def pod_rows(
    lab: Lab,
    scenario: Scenario,
    objects: dict[str, dict[str, Any]],
    conns: dict[str, list[Any]],
) -> list[dict[str, Any]]:
    """One row per pod interface: what the pod asked for and what it really has."""
    vlans = tor_vlans(lab)
    by_pci = {vf.pci_address: vf for vf in lab.vfs}
    rows = []
    for pod in scenario.pods:
        obj = objects.get(pod.key) or {}
        phase = (obj.get("status") or {}).get("phase", "Absent")
        ns = pod_netns(lab, pod)
        for service, ifname in pod.services:
            svc = scenario.service(service)
            conn = next(
                (c for c in conns.get(pod.key, []) if c.ifname == ifname or c.service == service),
                None,
            )
            vf = by_pci.get(conn.pci_address) if conn else None
            ips = addresses(ns, ifname) if conn else []
            mtu = (build.link_names(ns).get(ifname) or {}).get("mtu") if conn else None
            vlan = vlans.get(vf.tor_port) if vf else None
            problems = []
            if phase != "Running":
                message = (obj.get("status") or {}).get("message") or ""
                problems.append(f"pod {phase}" + (f": {message}" if message else ""))
            elif conn is None:
                problems.append("no connection attached")
            else:
                if not ips:
                    problems.append(f"no address on {ifname}")
                if svc is not None and vlan != svc.vlan:
                    problems.append(f"TOR port in VLAN {vlan}, service wants {svc.vlan}")
                if svc is not None and mtu != svc.mtu:
                    problems.append(f"MTU {mtu}, service wants {svc.mtu}")
            rows.append(
                {
                    "pod": pod.key,
                    "service": service,
                    "resource": ", ".join(f"{r}: {n}" for r, n in sorted(pod.resources.items())),
                    "phase": phase,
                    "vf_pci": conn.pci_address if conn else None,
                    "interface": ifname,
                    "ip": ips[0] if ips else None,
                    "mtu": mtu,
                    "tor_port": vf.tor_port if vf else None,
                    "vlan": vlan,
                    "ok": not problems,
                    "problem": "; ".join(problems),
                }
            )
    return rows


def _ping(ns: str, ip: str) -> bool:
    # 2 probes 0.2 s apart, 1 s in all: an expected failure costs one second, and all run at once
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-w", "1", ip],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return res.returncode == 0


def ping_matrix(lab: Lab, scenario: Scenario, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pod pings every other pod's every address; expected: only within one service."""
    pods = {p.key: p for p in scenario.pods}
    targets = [r for r in rows if r["ip"]]
    sources = [p for p in scenario.pods if any(r["pod"] == p.key and r["ip"] for r in rows)]
    jobs = []
    for src in sources:
        for t in targets:
            if t["pod"] == src.key:
                continue
            ip = t["ip"].split("/")[0]
            expected = expected_reachable(src, pods[t["pod"]], t["service"])
            jobs.append((src, t, ip, expected))
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(jobs)))) as pool:
        results = list(pool.map(lambda j: _ping(pod_netns(lab, j[0]), j[2]), jobs))
    return [
        {
            "from": src.key,
            "to": t["pod"],
            "address": ip,
            "service": t["service"],
            "expected": expected,
            "reached": reached,
            "ok": reached == expected,
        }
        for (src, t, ip, expected), reached in zip(jobs, results, strict=True)
    ]


def delete_pods(lab: Lab, scenario: Scenario) -> bool:
    """Delete every pod (graceful, as kubectl does); wait until the API has none left and nsmgr
    has closed every connection. The second wait matters: nsmgr gives the VF back before it
    closes at the shim, so a pod can be gone while its TOR port is still being released."""
    api = apiclient.api_url(lab.state_dir)
    for pod in scenario.pods:
        with contextlib.suppress(apiclient.ApiError):
            apiclient.delete_pod(api, pod.namespace, pod.name)

    def none_left() -> bool:
        try:
            return not connections(lab)
        except grpc.RpcError:
            return False

    deadline = time.monotonic() + DELETE_TIMEOUT
    gone = _wait("pods gone", lambda: not apiclient.list_pods(api), DELETE_TIMEOUT)
    return _wait("connections closed", none_left, max(0.0, deadline - time.monotonic())) and gone


def vfs_restored(lab: Lab) -> list[str]:
    """What differs from the lab as built: each VF netdev in the node netns, its MAC, MTU, up."""
    links = build.link_names(lab.node_ns)
    problems = []
    for vf in lab.vfs:
        link = links.get(vf.netdev)
        if link is None:
            problems.append(f"VF {vf.pci_address}: {vf.netdev} not back in {lab.node_ns}")
        elif link.get("address") != vf.mac:
            problems.append(f"VF {vf.pci_address}: MAC {link.get('address')} (was {vf.mac})")
        elif link.get("mtu") != BUILT_MTU:  # a service's MTU (9000, say) must not stay behind
            problems.append(f"VF {vf.pci_address}: MTU {link.get('mtu')} (was {BUILT_MTU})")
        elif "UP" not in link.get("flags", []):
            problems.append(f"VF {vf.pci_address}: {vf.netdev} is down (was up)")
    return problems


def tor_released(lab: Lab) -> list[str]:
    return [f"TOR port {p} still in VLAN {v}" for p, v in tor_vlans(lab).items() if v is not None]


def torshim_audit(lab: Lab) -> tuple[bool, str]:
    """`torshim audit -o json` as an operator would run it: every port ok?"""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torshim.cli",
            "audit",
            "--config",
            lab.torshim_config,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        doc = json.loads(res.stdout)
    except ValueError:
        return False, " ".join((res.stderr or res.stdout).split())[:200] or f"exit {res.returncode}"
    ports = doc.get("ports", doc) if isinstance(doc, dict) else doc
    bad = [f"{p['port']}: {p['status']}" for p in ports if p.get("status") != "ok"]
    if res.returncode != 0 and not bad:
        bad.append(f"exit {res.returncode}")
    return not bad, ", ".join(bad) or f"{len(ports)} ports ok"


# -- the whole run ------------------------------------------------------------------------------


def run(
    lab: Lab,
    scenario: Scenario,
    progress: build.Progress = build._quiet,
    up: Callable[[Lab, build.Progress], dict[str, Any]] = build.up,
    before_ping: Callable[[Lab], None] | None = None,
) -> dict[str, Any]:
    """The demo; always tears down. LabError when the lab cannot be built or started (after
    the teardown); otherwise the result, whose `ok` says whether every expectation held."""
    timer = Timer()
    result: dict[str, Any] = {
        "prefix": lab.prefix,
        "scenario": scenario.source,
        "pods": [],
        "matrix": [],
        "timings": timer.phases,
        "teardown": {},
        "audit": {"ok": False, "detail": "not run"},
        "errors": [],
    }
    started = time.monotonic()
    try:
        with timer.phase("lab"):
            progress("building the lab")
            info = up(lab, progress)
        tor = info.get("tor") or {}
        result["switch"], result["driver"] = tor.get("switch"), tor.get("driver")
        result["components"], result["pods"] = start_scenario(lab, scenario, timer, progress)
        if before_ping is not None:  # tests: break something the checks must then catch
            before_ping(lab)
        with timer.phase("ping"):
            progress("ping matrix")
            result["matrix"] = ping_matrix(lab, scenario, result["pods"])
        with timer.phase("audit"):  # the switch as torshim wants it while the pods are attached
            progress("torshim audit")
            ok, detail = torshim_audit(lab)
        result["audit"] = {"ok": ok, "detail": detail}
        with timer.phase("delete"):
            progress("deleting pods")
            gone = delete_pods(lab, scenario)
        checks = result["teardown"]
        detail = "" if gone else "pods still in the API, or connections still open in nsmgr"
        checks["pods_deleted"] = {"ok": gone, "detail": detail}
        problems = vfs_restored(lab)
        checks["vfs_restored"] = {"ok": not problems, "detail": "; ".join(problems)}
        problems = tor_released(lab)
        checks["tor_ports_released"] = {"ok": not problems, "detail": "; ".join(problems)}
        with timer.phase("audit after"):
            progress("torshim audit")
            ok, detail = torshim_audit(lab)
        checks["torshim_audit"] = {"ok": ok, "detail": detail}
    except (build.LabError, apiclient.ApiError, OSError) as e:
        result["errors"].append(" ".join(str(e).split()))
    finally:
        _teardown(lab, timer, result, progress)
    timer.phases["total"] = round(time.monotonic() - started, 3)
    result["ok"] = (
        not result["errors"]
        and bool(result["pods"])
        and all(r["ok"] for r in result["pods"])
        and all(m["ok"] for m in result["matrix"])
        and all(c["ok"] for c in result["teardown"].values())
        and result["audit"]["ok"]
    )
    return result


def _failed_so_far(result: dict[str, Any]) -> bool:
    return (
        bool(result["errors"])
        or not all(r["ok"] for r in result["pods"])
        or not all(m["ok"] for m in result["matrix"])
        or not all(c["ok"] for c in result["teardown"].values())
        or not result["audit"]["ok"]
    )


def _teardown(lab: Lab, timer: Timer, result: dict[str, Any], progress: build.Progress) -> None:
    """Stop components, remove the lab, check nothing is left; a second Ctrl-C cannot stop it."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        with timer.phase("teardown"):
            progress("stopping components, removing the lab")
            try:
                components.stop_all(lab)
            except Exception as e:  # the lab's removal must still run
                result["errors"].append(f"stopping components: {e}")
            if _failed_so_far(result):  # keep the logs of a failed run for the user
                keep = kept_logs(lab.prefix)
                shutil.rmtree(keep, ignore_errors=True)
                with contextlib.suppress(OSError):
                    shutil.copytree(os.path.join(lab.state_dir, "logs"), keep)
                    result["logs"] = keep
            try:
                build.destroy(lab.prefix, os.path.dirname(lab.state_dir))
            except build.LabError as e:
                result["errors"].append(str(e))
            left = build.leftovers(lab.prefix, os.path.dirname(lab.state_dir))
            result["teardown"]["nothing_left"] = {"ok": not left, "detail": ", ".join(left)}
    finally:
        if main:
            signal.signal(signal.SIGINT, old)
