"""The kubelet device plugin on a big node: 8 E810 PFs × 128 VFs (1,024 VFs) in 3 pools.

Goals (issue 3), all measured in one run against the same fake host (built under /dev/shm):

- Allocate of one VF over the unix socket, through the daemon's own handler (a DevicePluginManager
  serving the 3 pools, writing device-info files), at most 1.3× the same RPC answered by an empty
  handler on the same kind of server. Calls alternate between the two, so noise hits both alike.
  Two cases: a VF allocated before (the steady state: its device-info file is there, as the daemon
  keeps them until the VF leaves the pool) and each VF's first Allocate since start (file written).
- A PF's carrier change reaches kubelet's open ListAndWatch stream in ≤ 5 ms (median). Timed from
  the moment the netlink event is handed to the manager's watcher (the fake sysfs already changed,
  as the kernel changes carrier before it tells anyone) until the client has the new list: the
  manager loop waking on its queue, the watcher re-reading the PF's link, pools and health
  recomputed, push() comparing every pool's list, the stream's wake-up, building and sending the
  list, and gRPC receiving and parsing it in the client. The manager loop runs as in the daemon.
- The daemon (`sriov-device-plugin`, a subprocess, with its udev/netlink sources and /metrics)
  serving the 1,024 VFs in 3 pools to a stand-in kubelet stays ≤ 60 MB resident (VmRSS, MB = 10^6
  bytes), reported with its ratio to a bare `python -c 'import grpc'` process measured the same way.

In-process, the stand-in for kubelet is a Registration server that accepts the plugin, then one
ListAndWatch stream per pool read as kubelet reads them, over direct gRPC stubs: one stream per
resource, so the server sends exactly what it would send to kubelet. The daemon's default logging
(INFO, its text format) is on, into /dev/null.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc

from benchmarks import Metric, median, p90, p99
from benchmarks.bench_discovery import PF_BUSES, tree_base
from deviceplugin.manager import DevicePluginManager, Options
from deviceplugin.server import DevicePluginServer
from deviceplugin.types import ContainerAllocation, DeviceState
from nicinventory.events import HostEvent
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2 as pb
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc
from tests.deviceplugin.kubelet import KubeletStandIn

PFS = 8
VFS_PER_PF = 128  # E810's sriov_totalvfs
NETDEV_VFS = 96  # per PF on iavf; the other 32 on vfio-pci (a DPDK pool)
MTU = 9000
ALLOCATE_RATIO_GOAL = 1.3
HEALTH_GOAL_MS = 5.0
RSS_GOAL_MB = 60.0
PREFIX = "intel.com"
NET_A, NET_B, DPDK = (f"{PREFIX}/e810_net_a", f"{PREFIX}/e810_net_b", f"{PREFIX}/e810_dpdk")
# Two netdev pools of four PFs each and one vfio-pci pool across all eight: 384 + 384 + 256 VFs.
CONFIG = f"""\
resourceList:
  - resourceName: e810_net_a
    resourcePrefix: {PREFIX}
    selectors: {{drivers: [iavf], pfNames: [ens1f0, ens2f0, ens3f0, ens4f0]}}
  - resourceName: e810_net_b
    resourcePrefix: {PREFIX}
    selectors: {{drivers: [iavf], pfNames: [ens5f0, ens6f0, ens7f0, ens8f0]}}
  - resourceName: e810_dpdk
    resourcePrefix: {PREFIX}
    selectors: {{drivers: [vfio-pci]}}
"""
POOL_SIZES = {NET_A: 4 * NETDEV_VFS, NET_B: 4 * NETDEV_VFS, DPDK: PFS * (VFS_PER_PF - NETDEV_VFS)}
FLIPPED_PF = "ens1f0"  # in NET_A (its netdev VFs) and DPDK (its vfio-pci VFs)
AGAIN_PF = "ens2f0"  # NET_A's VFs handed out again and again (their device-info files exist)
FIRST_PFS = ("ens3f0", "ens4f0")  # NET_A's VFs handed out once each (their files get written)
WAIT = 60.0  # bound of every wait; a working run never gets near it
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"


@dataclass(frozen=True)
class Host:
    root: str
    fs: FakeSysfs
    vfs: dict[str, tuple[str, ...]]  # PF ifname -> its VFs' PCI addresses


def build_host(root: str) -> Host:
    fs = FakeSysfs(root)
    bindings = [VFSpec(binding="netdev" if i < NETDEV_VFS else "vfio") for i in range(VFS_PER_PF)]
    vfs = {}
    for i, bus in enumerate(PF_BUSES):
        ifname = f"ens{i + 1}f0"
        built = fs.add_pf(
            PFSpec(
                model="e810",
                pci_address=f"0000:{bus}:00.0",
                ifname=ifname,
                numa_node=0 if i < PFS // 2 else 1,
                mtu=MTU,
                vfs=bindings,
            )
        )
        vfs[ifname] = built.vf_addresses
    return Host(fs.root, fs, vfs)


# -- the in-process kubelet side --------------------------------------------------------------------
class EmptyPool:
    """A PoolHandler that does no work: the floor an Allocate cannot go below on this server."""

    resource_name = "example.com/empty"

    def device_states(self) -> list[DeviceState]:
        return []

    def allocate(self, container_requests: list[list[str]]) -> list[ContainerAllocation]:
        return [ContainerAllocation() for _ in container_requests]

    def preferred_allocation(
        self, available: list[str], must_include: list[str], size: int
    ) -> list[str]:
        return []


class _Registrar(pb_grpc.RegistrationServicer):
    """kubelet.sock that accepts every plugin; the benchmark then dials back as kubelet would."""

    def __init__(self) -> None:
        self.registered: list[str] = []

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        self.registered.append(request.resource_name)
        return pb.Empty()


@contextlib.contextmanager
def registrar(kubelet_dir: str) -> Iterator[_Registrar]:
    servicer = _Registrar()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RegistrationServicer_to_server(servicer, server)
    server.add_insecure_port("unix:" + os.path.join(kubelet_dir, "kubelet.sock"))
    server.start()
    try:
        yield servicer
    finally:
        server.stop(0).wait(5.0)


@contextlib.contextmanager
def daemon_logging() -> Iterator[None]:
    """Log as the daemon does by default (INFO, its text format), into /dev/null: the records are
    made and formatted, as they are in the daemon, without filling the benchmark's output."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    with open(os.devnull, "w", encoding="utf-8") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


class _Drain:
    """A ListAndWatch stream of a pool not being timed, read in a thread. Only received: kubelet
    reads the lists in its own process, not on the daemon's interpreter lock as this thread does."""

    def __init__(self, call: grpc.Future) -> None:
        self.call = call
        self.lists = 0
        self.thread = threading.Thread(target=self._run, name="bench-law", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for _ in self.call:
                self.lists += 1

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5.0)


@dataclass
class InProcess:
    allocate: list[float]  # VFs allocated before: their device-info files are there
    allocate_empty: list[float]
    first: list[float]  # each VF's first Allocate since the daemon started: files written
    first_empty: list[float]
    health: list[float]
    stale_lists: int  # lists that arrived without the change (must be 0)
    flipped_devices: int  # devices whose health each flip changes in the timed list
    list_size: int


def _allocate_request(dev_id: str) -> pb.AllocateRequest:
    return pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=[dev_id])]
    )


def measure_allocate(
    real: pb_grpc.DevicePluginStub, empty: pb_grpc.DevicePluginStub, ids: list[str]
) -> tuple[list[float], list[float]]:
    """One VF per call, in the order given, the daemon's handler and the empty one alternating."""
    out_real: list[float] = []
    out_empty: list[float] = []
    clock = time.perf_counter_ns
    for dev_id in ids:
        request = _allocate_request(dev_id)
        t0 = clock()
        resp = real.Allocate(request, timeout=WAIT)
        t1 = clock()
        empty.Allocate(request, timeout=WAIT)
        t2 = clock()
        if not resp.container_responses[0].envs:
            raise RuntimeError(f"Allocate of {dev_id} gave no env: not the daemon's handler")
        out_real.append((t1 - t0) / 1e6)
        out_empty.append((t2 - t1) / 1e6)
    return out_real, out_empty


def measure_health(
    manager: DevicePluginManager,
    host: Host,
    stream: Iterator[pb.ListAndWatchResponse],
    flips: int,
    warmup: int,
) -> tuple[list[float], int, int]:
    """Carrier of FLIPPED_PF down, up, down...; the timed list must show its VFs' new health."""
    flipped = set(host.vfs[FLIPPED_PF]) & set(manager.states.devices(NET_A))
    samples: list[float] = []
    stale = 0
    size = 0
    clock = time.perf_counter_ns
    for i in range(warmup + flips):
        up = i % 2 == 1  # starts up: the first flip takes it down; an even count leaves it up
        host.fs.set_link(FLIPPED_PF, up)
        attrs = {"state": "up" if up else "down", "carrier": up, "mtu": MTU}
        event = HostEvent("netlink", "net", "change", ifname=FLIPPED_PF, attrs=attrs)
        want = HEALTHY if up else UNHEALTHY
        t0 = clock()
        manager.watcher.inject(event)
        while True:
            resp = next(stream)
            t1 = clock()
            health = {d.health for d in resp.devices if d.ID in flipped}
            if health == {want}:
                break
            stale += 1
        size = len(resp.devices)
        if i >= warmup:
            samples.append((t1 - t0) / 1e6)
        time.sleep(0.02)  # let the other pools' streams take their lists: flaps are not a flood
    return samples, stale, size


def run_in_process(
    host: Host, tmp: str, calls: int, warmup: int, flips: int, flip_warmup: int
) -> InProcess:
    kubelet_dir = os.path.join(tmp, "dp")
    os.makedirs(kubelet_dir)
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG)
    opts = Options(
        config_file=config,
        sysfs_root=host.root,
        kubelet_dir=kubelet_dir,
        registry_dir=os.path.join(tmp, "no-plugins-registry"),  # absent: no plugin watcher
        pod_resources_socket=os.path.join(tmp, "no-pod-resources.sock"),
        device_info_dir=os.path.join(tmp, "devinfo"),
        dev_root=os.path.join(tmp, "dev"),
        resync_period=3600.0,  # no periodic rescan lands inside a measurement
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(daemon_logging())
        accepted = stack.enter_context(registrar(kubelet_dir))
        manager = DevicePluginManager(opts)
        stack.callback(manager.stop)
        manager.start()
        loop = threading.Thread(target=manager.run, name="bench-manager", daemon=True)
        loop.start()

        def stop_loop() -> None:
            manager.request_stop()
            loop.join(5.0)

        stack.callback(stop_loop)
        if sorted(accepted.registered) != sorted(POOL_SIZES):
            raise RuntimeError(f"registered {accepted.registered}, expected {sorted(POOL_SIZES)}")

        empty = DevicePluginServer(EmptyPool(), kubelet_dir)
        empty.start()
        stack.callback(empty.stop, 0)

        stubs: dict[str, pb_grpc.DevicePluginStub] = {}
        for name, server in [*manager.servers.items(), (EmptyPool.resource_name, empty)]:
            channel = grpc.insecure_channel("unix:" + server.socket_path)
            stack.callback(channel.close)
            grpc.channel_ready_future(channel).result(timeout=WAIT)
            stubs[name] = pb_grpc.DevicePluginStub(channel)
            stubs[name].GetDevicePluginOptions(pb.Empty(), timeout=WAIT)
        timed = stubs[NET_A].ListAndWatch(pb.Empty(), timeout=10 * WAIT)  # no endless hang
        stack.callback(timed.cancel)
        first_list = next(timed)
        if len(first_list.devices) != POOL_SIZES[NET_A]:
            raise RuntimeError(f"{NET_A} lists {len(first_list.devices)} devices")
        for name in (NET_B, DPDK):
            stack.callback(_Drain(stubs[name].ListAndWatch(pb.Empty())).close)

        members = manager.states.devices(NET_A)
        real_stub, empty_stub = stubs[NET_A], stubs[EmptyPool.resource_name]
        again = [a for a in host.vfs[AGAIN_PF] if a in members][: max(calls // 4, 1)]
        first_ids = [a for pf in FIRST_PFS for a in host.vfs[pf] if a in members][:calls]
        # warm-up: every VF of the "again" set once, then round and round
        measure_allocate(
            real_stub, empty_stub, again + [again[i % len(again)] for i in range(warmup)]
        )
        real, floor = measure_allocate(
            real_stub, empty_stub, [again[i % len(again)] for i in range(calls)]
        )
        real_first, floor_first = measure_allocate(real_stub, empty_stub, first_ids)
        health, stale, size = measure_health(manager, host, timed, flips, flip_warmup)
        flipped = len(set(host.vfs[FLIPPED_PF]) & set(manager.states.devices(NET_A)))
    return InProcess(real, floor, real_first, floor_first, health, stale, flipped, size)


# -- resident memory of the daemon ----------------------------------------------------------------
def vm_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM... of a process, in kB as the kernel counts them (KiB)."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Vm") or key == "Threads":
                out[key] = int(value.split()[0])
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)


def _daemon_command() -> list[str]:
    """The installed console script beside this interpreter, else the same code with -m."""
    script = os.path.join(os.path.dirname(sys.executable), "sriov-device-plugin")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "deviceplugin.cli"]


class DaemonExited(RuntimeError):
    """The daemon ended before serving every pool; the message ends with its log."""


def _tail(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()[-2000:]


def daemon_rss(host: Host, tmp: str, events: bool) -> dict[str, int]:
    """The daemon's /proc status once kubelet holds every pool's full list. DaemonExited if it
    ended first (its udev/netlink sources may not open here: the caller retries without them)."""
    kubelet_dir = os.path.join(tmp, "dp")
    os.makedirs(kubelet_dir)
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(CONFIG)
    log_path = os.path.join(tmp, "daemon.log")
    args = [
        *_daemon_command(),
        f"--config-file={config}",
        f"--sysfs-root={host.root}",
        f"--kubelet-dir={kubelet_dir}",
        f"--plugins-registry-dir={os.path.join(tmp, 'no-plugins-registry')}",
        f"--pod-resources-socket={os.path.join(tmp, 'no-pod-resources.sock')}",
        f"--device-info-dir={os.path.join(tmp, 'devinfo')}",
        "--resync-period=3600",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={_free_port()}",
        "--log-level=warning",
        *([] if events else ["--no-events"]),
    ]
    with contextlib.ExitStack() as stack:
        kubelet = stack.enter_context(KubeletStandIn(kubelet_dir, dial_timeout=WAIT))
        log = stack.enter_context(open(log_path, "wb"))
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        stack.callback(_stop, proc)
        deadline = time.monotonic() + WAIT
        for name, size in POOL_SIZES.items():
            while True:
                if proc.poll() is not None:
                    raise DaemonExited(f"daemon exited {proc.returncode}:\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: no full list in {WAIT:g}s:\n{_tail(log_path)}")
                with contextlib.suppress(TimeoutError):
                    kubelet.wait_for_devices(name, lambda d, n=size: len(d) == n, timeout=0.2)
                    break
        return vm_kb(proc.pid)


def bare_grpc_rss() -> dict[str, int]:
    """A Python that has imported grpc and nothing else, measured like the daemon."""
    code = "import sys, time, grpc; print('ready', flush=True); time.sleep(600)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the bare grpc process did not start")
        return vm_kb(proc.pid)
    finally:
        proc.kill()
        proc.wait(5.0)


# -- the benchmark --------------------------------------------------------------------------------
def allocate_metrics(
    name: str, label: str, real: list[float], empty: list[float], extra: dict[str, object]
) -> list[Metric]:
    """The daemon's handler, the empty one, and their ratio (the goal) for one set of calls."""
    ratio = median(real) / median(empty)
    return [
        Metric(
            name=name,
            label=f"{label}: daemon's handler over the unix socket",
            unit="ms",
            median=median(real),
            p90=p90(real),
            p99=p99(real),
            runs=len(real),
            extra=extra,
        ),
        Metric(
            name=f"{name}_empty",
            label=f"{label}: empty handler, same kind of server",
            unit="ms",
            median=median(empty),
            p90=p90(empty),
            p99=p99(empty),
            runs=len(empty),
        ),
        Metric(
            name=f"{name}_ratio",
            label=f"{label}: daemon's / empty (medians; p99s)",
            unit="x",
            median=ratio,
            p90=None,
            p99=p99(real) / p99(empty),
            goal=f"≤ {ALLOCATE_RATIO_GOAL:g}×",
            met=ratio <= ALLOCATE_RATIO_GOAL,
            runs=len(real),
        ),
    ]


def run(quick: bool = False) -> list[Metric]:
    calls, warmup, flips, flip_warmup = (20, 5, 6, 2) if quick else (600, 100, 100, 10)
    base = tree_base()
    with tempfile.TemporaryDirectory(prefix="deviceplugin-bench-", dir=base) as tmp:
        host = build_host(os.path.join(tmp, "sys"))
        in_proc_dir = os.path.join(tmp, "inproc")
        r = run_in_process(host, in_proc_dir, calls, warmup, flips, flip_warmup)
        shutil.rmtree(in_proc_dir, ignore_errors=True)
        events = True
        try:
            daemon = daemon_rss(host, os.path.join(tmp, "daemon"), events)
        except DaemonExited:  # no udev/netlink here? measure the daemon without its sources
            events = False
            daemon = daemon_rss(host, os.path.join(tmp, "daemon-no-events"), events)
        bare = bare_grpc_rss()

    health_med = median(r.health)
    rss_mb, bare_mb = daemon["VmRSS"] * 1024 / 1e6, bare["VmRSS"] * 1024 / 1e6
    vfs = PFS * VFS_PER_PF
    return [
        *allocate_metrics(
            "deviceplugin.allocate",
            "Allocate 1 VF, allocated before",
            r.allocate,
            r.allocate_empty,
            {"pool": NET_A, "pool_vfs": POOL_SIZES[NET_A], "vfs": vfs, "device_info": "there"},
        ),
        *allocate_metrics(
            "deviceplugin.allocate_first",
            "Allocate 1 VF, its first since start",
            r.first,
            r.first_empty,
            {"pool": NET_A, "device_info": "written"},
        ),
        Metric(
            name="deviceplugin.health_to_list",
            label=(
                f"PF carrier change → new ListAndWatch list "
                f"({r.flipped_devices} of {r.list_size} devices flip)"
            ),
            unit="ms",
            median=health_med,
            p90=p90(r.health),
            p99=p99(r.health),
            goal=f"≤ {HEALTH_GOAL_MS:g} ms",
            met=health_med <= HEALTH_GOAL_MS,
            runs=len(r.health),
            extra={
                "stale_lists": r.stale_lists,
                "list_devices": r.list_size,
                "flipped_devices": r.flipped_devices,
                "path": "watcher event → manager loop → pools/health → push → stream → client",
            },
        ),
        Metric(
            name="deviceplugin.rss",
            label=f"daemon RSS, {vfs} VFs in {len(POOL_SIZES)} pools, lists sent",
            unit="MB",
            median=rss_mb,
            p90=None,
            goal=f"≤ {RSS_GOAL_MB:g} MB",
            met=rss_mb <= RSS_GOAL_MB,
            runs=1,
            extra={
                "vm_rss_kb": daemon["VmRSS"],
                "vm_rss_mib": round(daemon["VmRSS"] / 1024, 1),
                "vm_hwm_kb": daemon.get("VmHWM"),
                "threads": daemon.get("Threads"),
                "events": events,
                "vfs": vfs,
                "pools": len(POOL_SIZES),
            },
        ),
        Metric(
            name="deviceplugin.rss_bare_grpc",
            label="bare python -c 'import grpc' RSS",
            unit="MB",
            median=bare_mb,
            p90=None,
            runs=1,
            extra={"vm_rss_kb": bare["VmRSS"]},
        ),
        Metric(
            name="deviceplugin.rss_ratio",
            label="daemon RSS / bare grpc process RSS",
            unit="x",
            median=rss_mb / bare_mb,
            p90=None,
            runs=1,
        ),
    ]
