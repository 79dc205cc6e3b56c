"""The node agent: one VF into a pod and back, 50 pods at once, and the daemon's memory.

Goals (issue 4), measured in one run on veth stand-ins in a node namespace of the benchmark's own:

- Attach of one VF (the agent's `request()`: validation, the original state read, four fsync'd
  journal records on disk, move + rename in one message, MTU, an address, up, a route) and detach
  (`close()`: three journal records, down, MTU back, move back under the old name, read back and
  verified), each at most 1.2× the same netlink operations done by `ip -batch` in the same run:
  attach = `ip -n node -batch` (move + rename) then `ip -n pod -batch` (MTU, address, up, route),
  detach = `ip -n pod -batch` (down, MTU, move + rename back). Runs alternate between the agent
  and ip, on two VFs into two pods, so noise hits both alike. The move into a namespace alone costs
  about 15 ms here (kernel: synchronize_net), which is most of either figure.
- 50 pods attached at once (50 threads calling the agent, 50 VFs, 50 pod namespaces) on this
  machine's 2 cores: the wall time and attaches per second, then the same for 50 detaches; for
  information, the ratio to 50 × the single `ip -batch` attach (the kernel serialises moves under
  the RTNL lock, so that is roughly the floor of any concurrency).
- The daemon (`nsmgr serve`, a subprocess) holding 50 connections: resident memory (VmRSS, MB =
  10^6 bytes), and its ratio to a bare `python -c 'import grpc'`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks import Metric, median, p90
from benchmarks.bench_deviceplugin import bare_grpc_rss, vm_kb
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec

RATIO_GOAL = 1.2
SERVICE = "bench.example.com"
WAIT = 60.0


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")


def _batch(ns: str, lines: list[str]) -> None:
    res = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        raise RuntimeError(f"ip -n {ns} -batch: {res.stderr.strip()}")


class Bench:
    """A node namespace with `n` veth VFs (vf0..), their fake sysfs, `n` pods, a state dir on disk
    (so fsync costs what it costs), and the agent's config. Everything goes in close()."""

    def __init__(self, n: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.node = f"nsmbench-{tag}"
        self.pods = [f"nsmbench-{tag}-p{i}" for i in range(n)]
        self.namespaces: list[str] = []
        self.root = tempfile.mkdtemp(prefix="nsmb")  # /tmp: a real disk, and a short socket path
        try:
            for ns in (self.node, *self.pods):
                _ip("netns", "add", ns)
                self.namespaces.append(ns)
            _batch(self.node, [f"link add vf{i} type veth peer name tp{i}" for i in range(n)])
            fs = FakeSysfs(os.path.join(self.root, "sys"))
            vfs = [VFSpec(ifname=f"vf{i}") for i in range(n)]
            built = fs.add_pf(
                PFSpec(model="e810", pci_address="0000:3b:00.0", ifname="pf0", vfs=vfs)
            )
            self.vfs = list(built.vf_addresses)
        except BaseException:
            self.close()
            raise

    def config(self, **over: Any) -> dict[str, Any]:
        cfg = {
            "node_name": "bench",
            "state_dir": os.path.join(self.root, "state"),
            "socket": os.path.join(self.root, "nsm.sock"),
            "sysfs_root": os.path.join(self.root, "sys"),
            "node_netns": f"/run/netns/{self.node}",
            "pf_side": "none",
            "metrics": {"port": 0},
            "services": [
                {
                    "name": SERVICE,
                    "mtu": 1400,
                    "subnet": "10.64.0.0/16",
                    "routes": [{"prefix": "10.65.0.0/16", "via": "10.64.0.1"}],
                }
            ],
        }
        cfg.update(over)
        return cfg

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def agent_on(bench: Bench) -> Iterator[Any]:
    from nsmgr.agent import Agent
    from nsmgr.config import parse_config

    agent = Agent(parse_config(bench.config()))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def _attach_req(bench: Bench, i: int, pod: str) -> Any:
    from nsmgr.model import AttachRequest, ServiceRef

    return AttachRequest(ServiceRef.parse(SERVICE), bench.vfs[i], f"/run/netns/{pod}", "nsm0")


def measure_single(bench: Bench, runs: int, warmup: int) -> dict[str, list[float]]:
    """Agent attach/detach of vf0 into pod 0 and ip -batch attach/detach of vf1 into pod 1,
    alternating."""
    out: dict[str, list[float]] = {"attach": [], "detach": [], "ip_attach": [], "ip_detach": []}
    node, pod_a, pod_b = bench.node, bench.pods[0], bench.pods[1]
    ip_attach_node = [f"link set dev vf1 netns {pod_b} name nsm0"]
    ip_attach_pod = [
        "link set dev nsm0 mtu 1400",
        "addr add 10.66.0.2/16 dev nsm0",
        "link set dev nsm0 up",
        "route add 10.67.0.0/16 via 10.66.0.1 dev nsm0",
    ]
    ip_detach_pod = [
        "link set dev nsm0 down",
        "link set dev nsm0 mtu 1500",
        f"link set dev nsm0 netns {node} name vf1",
    ]
    clock = time.perf_counter_ns
    with agent_on(bench) as agent:
        req = _attach_req(bench, 0, pod_a)
        for i in range(warmup + runs):
            t0 = clock()
            info = agent.request(req)
            t1 = clock()
            agent.close(info.id)
            t2 = clock()
            _batch(node, ip_attach_node)
            _batch(pod_b, ip_attach_pod)
            t3 = clock()
            _batch(pod_b, ip_detach_pod)
            t4 = clock()
            if i >= warmup:
                out["attach"].append((t1 - t0) / 1e6)
                out["detach"].append((t2 - t1) / 1e6)
                out["ip_attach"].append((t3 - t2) / 1e6)
                out["ip_detach"].append((t4 - t3) / 1e6)
    return out


def measure_concurrent(bench: Bench, n: int) -> tuple[float, float]:
    """Wall ms of n attaches started together (one thread each), then of n detaches."""
    with agent_on(bench) as agent:
        reqs = [_attach_req(bench, i, bench.pods[i]) for i in range(n)]
        barrier = threading.Barrier(n + 1)

        def attach(req: Any) -> Any:
            barrier.wait()
            return agent.request(req)

        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(attach, r) for r in reqs]
            barrier.wait()
            t0 = time.perf_counter_ns()
            infos = [f.result(WAIT) for f in futures]
            attach_ms = (time.perf_counter_ns() - t0) / 1e6
        if sum(i.state == "attached" for i in infos) != n:
            raise RuntimeError("not every concurrent attach succeeded")
        with ThreadPoolExecutor(n) as pool:
            t0 = time.perf_counter_ns()
            list(pool.map(lambda i: agent.close(i.id), infos, timeout=WAIT))
            detach_ms = (time.perf_counter_ns() - t0) / 1e6
        if agent.connections():
            raise RuntimeError("connections left after the concurrent detach")
    return attach_ms, detach_ms


def daemon_rss(bench: Bench, n: int) -> dict[str, int]:
    """`nsmgr serve` holding n connections made over its socket."""
    import grpc

    from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
    from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc

    cfg = bench.config()
    path = os.path.join(bench.root, "nsmgr.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    log_path = os.path.join(bench.root, "nsmgr.log")
    script = os.path.join(os.path.dirname(sys.executable), "nsmgr")
    cmd = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "nsmgr.cli"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--log-level", "warning", "serve", "--config", path],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        channel = grpc.insecure_channel("unix:" + cfg["socket"])
        with channel:
            grpc.channel_ready_future(channel).result(timeout=WAIT)
            stub = pb_grpc.NetworkServiceStub(channel)
            conns = []
            for i in range(n):
                mech = pb.Mechanism(
                    cls="LOCAL",
                    type="KERNEL",
                    parameters={"pciAddress": bench.vfs[i], "netnsURL": bench.pods[i]},
                )
                conns.append(
                    stub.Request(
                        pb.NetworkServiceRequest(
                            connection=pb.Connection(network_service=SERVICE),
                            mechanism_preferences=[mech],
                        ),
                        timeout=WAIT,
                    )
                )
            status = vm_kb(proc.pid)
            for c in conns:
                stub.Close(c, timeout=WAIT)
        return status
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _ms_metric(name: str, label: str, samples: list[float], **extra: Any) -> Metric:
    return Metric(
        name=name, label=label, unit="ms", median=median(samples), p90=p90(samples),
        runs=len(samples), extra=extra,
    )  # fmt: skip


def _ratio(name: str, label: str, real: list[float], floor: list[float]) -> Metric:
    ratio = median(real) / median(floor)
    return Metric(
        name=name, label=label, unit="x", median=ratio, p90=None, goal=f"≤ {RATIO_GOAL:g}×",
        met=ratio <= RATIO_GOAL, runs=len(real),
    )  # fmt: skip


def run(quick: bool = False) -> list[Metric]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise RuntimeError("the nsmgr benchmark needs root and iproute2 (network namespaces)")
    runs, warmup, n = (3, 1, 10) if quick else (40, 5, 50)
    bench = Bench(max(n, 2))
    try:
        single = measure_single(bench, runs, warmup)
        attach_ms, detach_ms = measure_concurrent(bench, n)
        daemon = daemon_rss(bench, n)
    finally:
        bench.close()
    bare = bare_grpc_rss()
    ip_attach = median(single["ip_attach"])
    rss_mb, bare_mb = daemon["VmRSS"] * 1024 / 1e6, bare["VmRSS"] * 1024 / 1e6
    what = "move + rename, MTU, address, up, route; 4 fsync'd records"
    return [
        _ms_metric("nsmgr.attach", f"attach 1 VF: agent ({what})", single["attach"]),
        _ms_metric(
            "nsmgr.attach_ip_batch",
            "attach 1 VF: the same by ip -batch (2 processes)",
            single["ip_attach"],
        ),
        _ratio(
            "nsmgr.attach_ratio",
            "attach: agent / ip -batch (medians)",
            single["attach"],
            single["ip_attach"],
        ),
        _ms_metric(
            "nsmgr.detach",
            "detach 1 VF: agent (down, MTU, move back + rename; verified)",
            single["detach"],
        ),
        _ms_metric(
            "nsmgr.detach_ip_batch",
            "detach 1 VF: the same by ip -batch (1 process)",
            single["ip_detach"],
        ),
        _ratio(
            "nsmgr.detach_ratio",
            "detach: agent / ip -batch (medians)",
            single["detach"],
            single["ip_detach"],
        ),
        Metric(
            name="nsmgr.concurrent_attach",
            label=f"{n} pods attached at once: wall time ({n / attach_ms * 1000:.0f} attaches/s)",
            unit="ms", median=attach_ms, p90=None, runs=1,
            extra={
                "pods": n,
                "per_second": round(n / attach_ms * 1000, 1),
                "vs_serial_ip_batch": round(attach_ms / (n * ip_attach), 3),
                "cores": os.cpu_count(),
            },
        ),
        Metric(
            name="nsmgr.concurrent_detach",
            label=f"{n} pods detached at once: wall time ({n / detach_ms * 1000:.0f} detaches/s)",
            unit="ms", median=detach_ms, p90=None, runs=1,
            extra={"pods": n, "per_second": round(n / detach_ms * 1000, 1)},
        ),
        Metric(
            name="nsmgr.rss",
            label=f"nsmgr serve RSS holding {n} connections",
            unit="MB", median=rss_mb, p90=None, runs=1,
            extra={
                "vm_rss_kb": daemon["VmRSS"],
                "vm_hwm_kb": daemon.get("VmHWM"),
                "threads": daemon.get("Threads"),
                "connections": n,
            },
        ),
        Metric(
            name="nsmgr.rss_ratio",
            label="nsmgr serve RSS / bare grpc process RSS",
            unit="x", median=rss_mb / bare_mb, p90=None, runs=1,
            extra={"bare_grpc_vm_rss_kb": bare["VmRSS"]},
        ),
    ]  # fmt: skip


if __name__ == "__main__":  # python -m benchmarks.bench_nsmgr [--quick]
    for m in run("--quick" in sys.argv):
        print(m.to_dict())
