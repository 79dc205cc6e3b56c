"""The kubelet-facing gRPC layer over real unix sockets, against the kubelet stand-in.

Every wait is bounded (a condition with a timeout), never a sleep followed by an assertion, and
every server, stream and thread is stopped by a fixture even when a test fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from deviceplugin.registration import (
    KubeletWatch,
    PluginWatcherEndpoint,
    RegistrationError,
    register_with_kubelet,
)
from deviceplugin.server import DevicePluginServer, ServeError, default_socket_name
from deviceplugin.types import (
    AllocationError,
    ContainerAllocation,
    DeviceNode,
    DeviceState,
    HostMount,
)
from lab.kubelet import (
    AdmissionError,
    KubeletStandIn,
    PluginWatcherStandIn,
    PodResourcesStandIn,
    SeenDevice,
    WatcherResult,
)
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2 as dp_pb
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from sriov_nsm_wire.podresources.v1 import api_pb2 as pr_pb
from sriov_nsm_wire.podresources.v1 import api_pb2_grpc as pr_grpc

RES = "example.com/100g"
A, B, C = "0000:3b:02.0", "0000:3b:02.1", "0000:af:02.0"
WAIT = 10.0  # upper bound of every wait; a passing run never gets near it


def dev(pci: str, healthy: bool = True, numa: int | None = 0) -> DeviceState:
    return DeviceState(pci, healthy, numa, "" if healthy else "no carrier")


@dataclass
class FakePool:
    """A PoolHandler with a mutable device list; records calls so admission order is visible."""

    resource_name: str = RES
    states: list[DeviceState] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    boom: Exception | None = None  # raised by allocate() and device_states() when set: a bug
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, *states: DeviceState) -> None:
        with self.lock:
            self.states = list(states)

    def device_states(self) -> list[DeviceState]:
        if self.boom is not None:
            raise self.boom
        with self.lock:
            return list(self.states)

    def allocate(self, container_requests: list[list[str]]) -> list[ContainerAllocation]:
        self.calls.append("allocate")
        if self.boom is not None:
            raise self.boom
        known = {s.id: s for s in self.device_states()}
        out = []
        for ids in container_requests:
            for i in ids:
                if i not in known:
                    raise AllocationError(f"unknown device {i}")
                if not known[i].healthy:
                    raise AllocationError(f"device {i} is unhealthy: {known[i].reason}")
            out.append(
                ContainerAllocation(
                    envs={"PCIDEVICE_EXAMPLE_COM_100G": ",".join(ids)},
                    mounts=[
                        HostMount(f"/run/devinfo/{i}.json", f"/etc/devinfo/{i}.json") for i in ids
                    ],
                    devices=[
                        DeviceNode("/dev/vfio/vfio", "/dev/vfio/vfio"),
                        DeviceNode("/dev/vfio/42", "/dev/vfio/42", "rw"),
                    ],
                    annotations={"k8s.v1.cni.cncf.io/resourceName": self.resource_name},
                    cdi_devices=[f"example.com/vf={i}" for i in ids],
                )
            )
        return out

    def preferred_allocation(
        self, available: list[str], must_include: list[str], size: int
    ) -> list[str]:
        self.calls.append("preferred")
        if size > len(available):
            raise AllocationError(f"cannot choose {size} of {len(available)} devices")
        rest = sorted(set(available) - set(must_include), reverse=True)  # unlike kubelet's order
        return list(must_include) + rest[: size - len(must_include)]


def seen(states: list[DeviceState]) -> dict[str, SeenDevice]:
    """What the stand-in must end up holding for a given list."""
    return {
        s.id: SeenDevice(
            s.id,
            "Healthy" if s.healthy else "Unhealthy",
            () if s.numa_node is None else (s.numa_node,),
        )
        for s in states
    }


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Bounded wait for state outside the stand-in (polled; the bound only guards a hang)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def make_socket_file(path: str) -> None:
    """A unix socket file nobody listens on (what a crashed process leaves behind)."""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(path)
    finally:
        s.close()


@dataclass
class Dirs:
    plugins: Path  # kubelet's device-plugins folder
    registry: Path  # kubelet's plugins_registry
    root: Path


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    d = Dirs(tmp_path / "dp", tmp_path / "reg", tmp_path)  # short: unix paths stop at 107 bytes
    d.plugins.mkdir()
    d.registry.mkdir()
    return d


@pytest.fixture
def kubelet(dirs: Dirs) -> Iterator[KubeletStandIn]:
    k = KubeletStandIn(str(dirs.plugins), dial_timeout=2.0)
    k.start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
def pool() -> FakePool:
    p = FakePool()
    p.set(dev(A, numa=0), dev(B, numa=0), dev(C, numa=None))
    return p


@pytest.fixture
def serve(dirs: Dirs) -> Iterator[Callable[..., DevicePluginServer]]:
    """Start device plugin servers in the kubelet folder; all stopped at teardown."""
    started: list[DevicePluginServer] = []

    def start(handler: FakePool, socket_name: str | None = None) -> DevicePluginServer:
        server = DevicePluginServer(handler, str(dirs.plugins), socket_name)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(0)


@pytest.fixture
def registered(
    kubelet: KubeletStandIn, pool: FakePool, serve: Callable[..., DevicePluginServer]
) -> DevicePluginServer:
    """A pool served and registered; its first list has arrived at the stand-in."""
    server = serve(pool)
    register_with_kubelet(kubelet.socket_path, server.socket_name, RES)
    kubelet.wait_for_devices(RES, timeout=WAIT)
    return server


@contextmanager
def plugin_stub(server: DevicePluginServer) -> Iterator[dp_grpc.DevicePluginStub]:
    channel = grpc.insecure_channel("unix:" + server.socket_path)
    try:
        yield dp_grpc.DevicePluginStub(channel)
    finally:
        channel.close()


# --- socket ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "name"),
    [
        ("example.com/100g", "sriov-nsm-example.com_100g.sock"),
        ("intel.com/sriov_netdevice", "sriov-nsm-intel.com_sriov_netdevice.sock"),
        ("odd name/x:y", "sriov-nsm-odd_name_x_y.sock"),
    ],
)
def test_default_socket_name_is_one_safe_file_name(resource: str, name: str) -> None:
    assert default_socket_name(resource) == name


def test_start_replaces_a_stale_file_and_stop_removes_the_socket(
    dirs: Dirs, pool: FakePool, serve: Callable[..., DevicePluginServer]
) -> None:
    stale = dirs.plugins / default_socket_name(RES)
    stale.write_text("left by a previous run")
    server = serve(pool)
    assert server.serving and stale.is_socket()
    server.stop()
    assert not server.serving and not stale.exists()


def test_stop_leaves_a_socket_that_is_not_ours(
    dirs: Dirs, pool: FakePool, serve: Callable[..., DevicePluginServer]
) -> None:
    server = serve(pool)
    os.unlink(server.socket_path)  # kubelet wiped it...
    make_socket_file(server.socket_path)  # ...and something else lives there now
    server.stop()
    assert os.path.exists(server.socket_path)


def test_serve_errors_name_the_path(dirs: Dirs, pool: FakePool) -> None:
    missing = DevicePluginServer(pool, str(dirs.root / "no-such-dir"))
    with pytest.raises(ServeError, match=r"no-such-dir.*folder does not exist"):
        missing.start()
    long = DevicePluginServer(pool, str(dirs.plugins), "x" * 120 + ".sock")
    with pytest.raises(ServeError, match="longer than 107"):
        long.start()
    assert not missing.serving and not long.serving


# --- registration and ListAndWatch --------------------------------------------------------------


def test_registration_and_first_list(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    assert kubelet.resources() == [RES]
    assert kubelet.endpoint_socket(RES) == registered.socket_path
    opts = kubelet.options(RES)
    assert opts.get_preferred_allocation_available and not opts.pre_start_required
    devices = kubelet.wait_for_devices(RES, timeout=WAIT)
    assert list(devices) == [A, B, C]
    assert devices[A] == SeenDevice(A, "Healthy", (0,))
    assert devices[C].numa_nodes == ()  # unknown NUMA node: no topology at all
    assert kubelet.attempts[-1].accepted and kubelet.attempts[-1].endpoint == registered.socket_name


def test_notify_pushes_a_new_full_list(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    steps = [
        [dev(A, healthy=False), dev(B), dev(C, numa=None)],  # health flips down...
        [dev(A), dev(B), dev(C, numa=None)],  # ...and back up
        [dev(A), dev(C, numa=None)],  # a device removed
        [dev(A, numa=None), dev(C, numa=1)],  # topology gone / appears
    ]
    for states in steps:
        pool.set(*states)
        registered.notify()
        got = kubelet.wait_for_devices(RES, lambda d, s=states: d == seen(s), timeout=WAIT)
        assert got == seen(states)


def test_many_concurrent_notifies_end_with_the_last_state(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    def writer(n: int) -> None:
        for i in range(50):
            pool.set(dev(f"0000:{n:02x}:{i:02x}.0", healthy=i % 2 == 0, numa=n % 2))
            registered.notify()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    last = pool.device_states()
    assert kubelet.wait_for_devices(RES, lambda d: d == seen(last), timeout=WAIT) == seen(last)
    assert kubelet.updates(RES) <= 1 + 8 * 50  # coalescing allowed, never more lists than notifies


def test_a_stuck_stream_blocks_neither_notify_nor_other_streams(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    many = [dev(f"0000:{b:02x}:{f:02x}.{v}") for b in range(4) for f in range(32) for v in range(2)]
    with plugin_stub(registered) as stub:
        stuck = stub.ListAndWatch(dp_pb.Empty())  # opened, never read: flow control fills up
        try:
            wait_until(lambda: registered.active_streams == 2)

            def flood() -> None:
                for i in range(200):
                    pool.set(*many[: 1 + i])
                    registered.notify()

            t = threading.Thread(target=flood)
            t.start()
            t.join(WAIT)
            assert not t.is_alive()
            last = pool.device_states()
            kubelet.wait_for_devices(RES, lambda d: d == seen(last), timeout=WAIT)
        finally:
            stuck.cancel()
        wait_until(lambda: registered.active_streams == 1)  # a cancelled stream lets go


def test_a_failing_device_list_ends_the_stream_with_internal(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    pool.boom = RuntimeError("inventory gone")
    registered.notify()
    assert kubelet.wait_disconnected(RES, timeout=WAIT) == grpc.StatusCode.INTERNAL


def test_stop_ends_streams_cleanly_and_a_restarted_plugin_registers_again(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    registered.stop()
    assert kubelet.wait_disconnected(RES, timeout=WAIT) == grpc.StatusCode.OK
    assert not os.path.exists(registered.socket_path)
    assert registered.active_streams == 0
    registered.start()
    register_with_kubelet(kubelet.socket_path, registered.socket_name, RES)
    pool.set(dev(B))
    registered.notify()
    kubelet.wait_for_devices(RES, lambda d: d == seen([dev(B)]), timeout=WAIT)


def test_duplicate_registration_is_rejected_while_the_first_is_alive(
    kubelet: KubeletStandIn,
    registered: DevicePluginServer,
    serve: Callable[..., DevicePluginServer],
) -> None:
    with pytest.raises(RegistrationError, match="already registered") as e:
        register_with_kubelet(kubelet.socket_path, registered.socket_name, RES)
    assert "\n" not in str(e.value)
    other = serve(FakePool(), "other.sock")
    with pytest.raises(RegistrationError, match="already registered"):
        register_with_kubelet(kubelet.socket_path, other.socket_name, RES)
    assert kubelet.endpoint_socket(RES) == registered.socket_path
    assert [a.accepted for a in kubelet.attempts] == [True, False, False]


def test_register_without_kubelet_is_one_line(dirs: Dirs) -> None:
    with pytest.raises(RegistrationError) as e:
        register_with_kubelet(str(dirs.plugins / "kubelet.sock"), "x.sock", RES, timeout=2.0)
    msg = str(e.value)
    assert "\n" not in msg and "UNAVAILABLE" in msg and RES in msg


def test_register_before_serving_fails_when_kubelet_cannot_dial_back(dirs: Dirs) -> None:
    with KubeletStandIn(str(dirs.plugins), dial_timeout=0.3) as kubelet:
        with pytest.raises(RegistrationError, match="failed to dial device plugin"):
            register_with_kubelet(kubelet.socket_path, default_socket_name(RES), RES)
        assert kubelet.resources() == []


@pytest.mark.parametrize(
    ("version", "resource", "why"),
    [
        ("v1alpha", RES, "not supported"),
        ("v1beta1", "kubernetes.io/100g", "not in the format"),
        ("v1beta1", "100g", "not in the format"),
    ],
)
def test_stand_in_refuses_what_kubelet_refuses(
    kubelet: KubeletStandIn, registered: DevicePluginServer, version: str, resource: str, why: str
) -> None:
    channel = grpc.insecure_channel("unix:" + kubelet.socket_path)
    try:
        request = dp_pb.RegisterRequest(
            version=version, endpoint=registered.socket_name, resource_name=resource
        )
        with pytest.raises(grpc.RpcError) as e:
            dp_grpc.RegistrationStub(channel).Register(request, timeout=WAIT)
    finally:
        channel.close()
    assert e.value.code() == grpc.StatusCode.UNKNOWN and why in e.value.details()


# --- Allocate, GetPreferredAllocation, PreStartContainer -----------------------------------------


def test_allocate_translates_every_field(
    kubelet: KubeletStandIn, registered: DevicePluginServer
) -> None:
    resp = kubelet.allocate(RES, [A, B])
    assert dict(resp.envs) == {"PCIDEVICE_EXAMPLE_COM_100G": f"{A},{B}"}
    assert [(d.host_path, d.container_path, d.permissions) for d in resp.devices] == [
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
        ("/dev/vfio/42", "/dev/vfio/42", "rw"),
    ]
    assert [(m.host_path, m.container_path, m.read_only) for m in resp.mounts] == [
        (f"/run/devinfo/{A}.json", f"/etc/devinfo/{A}.json", True),
        (f"/run/devinfo/{B}.json", f"/etc/devinfo/{B}.json", True),
    ]
    assert dict(resp.annotations) == {"k8s.v1.cni.cncf.io/resourceName": RES}
    assert [c.name for c in resp.cdi_devices] == [f"example.com/vf={A}", f"example.com/vf={B}"]


def test_allocate_of_several_containers_in_one_request(registered: DevicePluginServer) -> None:
    request = dp_pb.AllocateRequest(
        container_requests=[
            dp_pb.ContainerAllocateRequest(devices_ids=[A]),
            dp_pb.ContainerAllocateRequest(devices_ids=[B, C]),
        ]
    )
    with plugin_stub(registered) as stub:
        resp = stub.Allocate(request, timeout=WAIT)
    assert [dict(c.envs)["PCIDEVICE_EXAMPLE_COM_100G"] for c in resp.container_responses] == [
        A,
        f"{B},{C}",
    ]


@pytest.mark.parametrize(
    ("ids", "message"),
    [(["0000:00:00.7"], "unknown device 0000:00:00.7"), ([A], f"device {A} is unhealthy")],
)
def test_allocation_error_is_invalid_argument_with_the_message(
    kubelet: KubeletStandIn,
    pool: FakePool,
    registered: DevicePluginServer,
    ids: list[str],
    message: str,
) -> None:
    pool.set(dev(A, healthy=False), dev(B))
    with pytest.raises(grpc.RpcError) as e:
        kubelet.allocate(RES, ids)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()


def test_a_handler_bug_is_internal_not_invalid_argument(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    pool.boom = RuntimeError("state file\nunreadable")
    with pytest.raises(grpc.RpcError) as e:
        kubelet.allocate(RES, [A])
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert e.value.details() == "state file unreadable"


def test_preferred_allocation(kubelet: KubeletStandIn, registered: DevicePluginServer) -> None:
    assert kubelet.preferred(RES, [A, B, C], [A], 2) == [A, C]
    with pytest.raises(grpc.RpcError) as e:
        kubelet.preferred(RES, [A, B], [], 3)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot choose 3 of 2 devices" in e.value.details()


def test_admission_asks_preferred_then_allocate_and_frees_on_release(
    kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    resp = kubelet.admit("p1", RES, 2)
    assert pool.calls == ["preferred", "allocate"]
    assert resp.envs["PCIDEVICE_EXAMPLE_COM_100G"] == f"{C},{B}"  # the plugin's choice won
    with pytest.raises(AdmissionError, match="Requested: 2, Available: 1"):
        kubelet.admit("p2", RES, 2)
    assert kubelet.release("p1") == 1
    kubelet.admit("p2", RES, 2)
    assert [(a.pod, a.device_ids) for a in kubelet.allocations()] == [("p2", (C, B))]


def test_prestart_container_and_options(registered: DevicePluginServer) -> None:
    with plugin_stub(registered) as stub:
        assert (
            stub.PreStartContainer(dp_pb.PreStartContainerRequest(devices_ids=[A]), timeout=WAIT)
            == dp_pb.PreStartContainerResponse()
        )
        opts = stub.GetDevicePluginOptions(dp_pb.Empty(), timeout=WAIT)
    assert opts.get_preferred_allocation_available and not opts.pre_start_required


# --- kubelet restarts -----------------------------------------------------------------------------


def test_kubelet_watch_decides_once_per_event(dirs: Dirs) -> None:
    kubelet_sock, own = str(dirs.plugins / "kubelet.sock"), str(dirs.plugins / "own.sock")
    make_socket_file(kubelet_sock)
    make_socket_file(own)
    calls: list[int] = []
    watch = KubeletWatch(str(dirs.plugins), lambda: [own], lambda: calls.append(1))
    assert not watch.check()
    os.unlink(own)  # our socket wiped
    assert watch.check() and not watch.check()
    make_socket_file(own)  # we serve again: not an event
    assert not watch.check()
    os.unlink(kubelet_sock)  # kubelet gone: nothing to register with yet
    assert not watch.check()
    make_socket_file(kubelet_sock)  # kubelet back
    assert watch.check() and not watch.check()
    os.unlink(own)  # a whole restart between two looks: one call
    os.unlink(kubelet_sock)
    make_socket_file(kubelet_sock)
    assert watch.check() and not watch.check()
    assert len(calls) == watch.restarts == 3


def test_kubelet_watch_survives_a_failing_on_restart(dirs: Dirs) -> None:
    def fail() -> None:
        raise RegistrationError("kubelet not there yet")

    watch = KubeletWatch(str(dirs.plugins), list, fail)
    make_socket_file(str(dirs.plugins / "kubelet.sock"))
    assert watch.check()
    assert watch.restarts == 1


def test_kubelet_restart_is_noticed_and_reregistration_works(
    dirs: Dirs, kubelet: KubeletStandIn, pool: FakePool, registered: DevicePluginServer
) -> None:
    def on_restart() -> None:
        if not os.path.exists(registered.socket_path):  # kubelet wiped it: serve a new socket
            registered.stop(0)
            registered.start()
        register_with_kubelet(kubelet.socket_path, registered.socket_name, RES)

    watch = KubeletWatch(str(dirs.plugins), lambda: [registered.socket_path], on_restart)
    watch.start()
    try:
        assert watch.uses_inotify
        kubelet.restart()
        wait_until(lambda: watch.restarts >= 1)
        kubelet.wait_for_devices(RES, lambda d: d == seen(pool.device_states()), timeout=WAIT)
        assert os.path.exists(registered.socket_path)
        pool.set(dev(A, healthy=False))  # the new stream is live
        registered.notify()
        kubelet.wait_for_devices(RES, lambda d: not d[A].healthy and len(d) == 1, timeout=WAIT)
    finally:
        watch.stop()


def test_kubelet_restart_keeps_the_checkpoint_and_wipes_sockets(
    dirs: Dirs, kubelet: KubeletStandIn, registered: DevicePluginServer
) -> None:
    checkpoint = dirs.plugins / "kubelet_internal_checkpoint"
    checkpoint.write_text("{}")
    kubelet.restart()
    assert checkpoint.exists() and not os.path.exists(registered.socket_path)
    assert kubelet.resources() == []


# --- plugin watcher -------------------------------------------------------------------------------


def test_plugin_watcher_registration(
    dirs: Dirs, kubelet: KubeletStandIn, pool: FakePool, serve: Callable[..., DevicePluginServer]
) -> None:
    server = serve(pool)
    ep = PluginWatcherEndpoint(str(dirs.registry), RES, server.socket_path)
    ep.start()
    try:
        assert os.path.basename(ep.socket_path) == "sriov-nsm-example.com_100g-reg.sock"
        watcher = PluginWatcherStandIn(str(dirs.registry), kubelet)
        assert watcher.scan() == [WatcherResult(ep.socket_path, RES, True)]
        assert ep.wait_status(WAIT) is True and ep.error == ""
        assert kubelet.wait_for_devices(RES, timeout=WAIT) == seen(pool.device_states())
        assert watcher.scan() == []  # already known
        ep.stop()
        assert not os.path.exists(ep.socket_path)
        watcher.scan()  # the registration socket went away: kubelet deregisters the plugin
        assert kubelet.resources() == []
    finally:
        ep.stop()


def test_plugin_watcher_reports_a_failed_registration(dirs: Dirs) -> None:
    with KubeletStandIn(str(dirs.plugins), dial_timeout=0.3) as kubelet:
        ep = PluginWatcherEndpoint(str(dirs.registry), RES, str(dirs.plugins / "nobody.sock"))
        ep.start()
        try:
            (result,) = PluginWatcherStandIn(str(dirs.registry), kubelet).scan()
            assert not result.registered
            assert ep.wait_status(WAIT) is False
            assert "failed to dial device plugin" in ep.error
        finally:
            ep.stop()


# --- pod resources --------------------------------------------------------------------------------


def test_pod_resources_follow_admissions_and_releases(
    dirs: Dirs, kubelet: KubeletStandIn, registered: DevicePluginServer
) -> None:
    pods = PodResourcesStandIn(str(dirs.root / "pr" / "kubelet.sock"), kubelet)
    pods.start()
    channel = grpc.insecure_channel("unix:" + pods.socket_path)
    try:
        stub = pr_grpc.PodResourcesListerStub(channel)
        kubelet.admit("p1", RES, 2, namespace="ns1", container="app")
        (pod,) = stub.List(pr_pb.ListPodResourcesRequest(), timeout=WAIT).pod_resources
        assert (pod.namespace, pod.name, [c.name for c in pod.containers]) == ("ns1", "p1", ["app"])
        devices = pod.containers[0].devices
        assert [(d.resource_name, list(d.device_ids)) for d in devices] == [(RES, [C]), (RES, [B])]
        assert [[n.ID for n in d.topology.nodes] for d in devices] == [[], [0]]
        got = stub.Get(
            pr_pb.GetPodResourcesRequest(pod_name="p1", pod_namespace="ns1"), timeout=WAIT
        )
        assert got.pod_resources == pod
        alloc = stub.GetAllocatableResources(pr_pb.AllocatableResourcesRequest(), timeout=WAIT)
        assert sorted(i for d in alloc.devices for i in d.device_ids) == [A, B, C]
        assert pods.release("p1", "ns1") == 1
        assert not stub.List(pr_pb.ListPodResourcesRequest(), timeout=WAIT).pod_resources
        with pytest.raises(grpc.RpcError) as e:
            stub.Get(pr_pb.GetPodResourcesRequest(pod_name="p1", pod_namespace="ns1"), timeout=WAIT)
        assert "not found" in e.value.details()
    finally:
        channel.close()
        pods.stop()
