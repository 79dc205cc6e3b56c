"""The kubelet-facing gRPC server of one resource pool (device plugin API v1beta1).

One `DevicePluginServer` per resource, all in one process. The pool logic stays behind the
`PoolHandler` protocol; this module only translates between it and the wire, and owns the unix
socket: bind, stale-file cleanup, and unlinking on stop (only if the file is still ours).

ListAndWatch is driven by a generation counter under one `threading.Condition`: `notify()` only
bumps the counter, so a slow or stuck stream never blocks the caller; every stream wakes, reads
the latest full list from the handler and sends it. Notifications may coalesce, but the last
state is always sent, because a stream re-reads the handler after every generation it sees.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from deviceplugin.types import (
    HEALTHY,
    UNHEALTHY,
    AllocationError,
    ContainerAllocation,
    DevicePluginError,
    DeviceState,
    PoolHandler,
)
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2 as pb
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
SOCKET_PREFIX = "sriov-nsm-"
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ServeError(DevicePluginError):
    """A socket cannot be served (folder missing, path too long, bind refused)."""


def socket_stem(resource_name: str) -> str:
    """`example.com/100g` -> `sriov-nsm-example.com_100g`: one file name per resource, no slashes."""
    return SOCKET_PREFIX + _UNSAFE.sub("_", resource_name)


def default_socket_name(resource_name: str) -> str:
    """The device plugin socket file name kubelet is told about at registration."""
    return socket_stem(resource_name) + ".sock"


class UnixGrpcServer:
    """A grpc.Server bound to one unix socket path, restartable (a grpc.Server is not).

    Shared by the device plugin server and the plugin-watcher endpoint so both treat their
    socket files the same way. grpc binds a private dot-name in the same folder, which is then
    renamed into place: the socket appears complete and atomically (replacing a stale file), and
    grpc's own unlink-by-path at shutdown only ever hits that private name. On stop the real
    path is unlinked only if it is still the file we made (kubelet may have wiped it and another
    instance may serve there now).
    """

    def __init__(
        self, path: str, add_servicers: Callable[[grpc.Server], None], max_workers: int = 8
    ) -> None:
        self.path = path
        self._add_servicers = add_servicers
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._identity: tuple[int, int, int] | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Bind and serve; raises ServeError with the path and the reason."""
        if self._server is not None:
            return
        if len(os.fsencode(self.path)) > UNIX_PATH_MAX:
            raise ServeError(f"{self.path}: socket path longer than {UNIX_PATH_MAX} bytes")
        _remove_stale(self.path)
        private = os.path.join(
            os.path.dirname(self.path), f".sriov-nsm-{os.getpid()}-{next(_private_names)}.sock"
        )
        _unlink_quietly(private)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="dp-grpc")
        )
        self._add_servicers(server)
        try:
            server.add_insecure_port("unix:" + private)
        except RuntimeError as e:
            server.stop(0)
            folder = os.path.dirname(self.path) or "."
            why = "folder does not exist" if not os.path.isdir(folder) else "bind refused"
            raise ServeError(f"{self.path}: cannot listen: {why}") from e
        server.start()
        try:
            os.rename(private, self.path)
            self._identity = _identity(self.path)
        except OSError as e:
            server.stop(0)
            _unlink_quietly(private)
            raise ServeError(f"{self.path}: cannot put the socket in place: {e.strerror}") from e
        self._server = server

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (in-flight RPCs get `grace` seconds) and unlink the socket if ours."""
        server, self._server = self._server, None
        if server is None:
            return
        identity, self._identity = self._identity, None
        server.stop(grace).wait((grace or 0.0) + 5.0)
        if identity is not None and _identity(self.path) == identity:
            _unlink_quietly(self.path)


_private_names = itertools.count()


def _identity(path: str) -> tuple[int, int, int] | None:
    """Which file is at `path`; ctime tells a re-created file from one with a reused inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def _remove_stale(path: str) -> None:
    """A previous run may have left its socket (or anything but a folder) at our path."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ServeError(f"{path}: is a directory, cannot listen there")
    log.info("removing stale file %s", path)
    _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --- translation between the plain data of types.py and the wire ---------------------------


@functools.lru_cache(maxsize=16384)
def to_device(state: DeviceState) -> pb.Device:
    """One ListAndWatch entry; topology only when the NUMA node is known.

    Cached: DeviceState is immutable and state.py keeps unchanged ones identical, so a health flip
    rebuilds only the devices that changed (a 384-device list: 1.2 ms -> 0.4 ms). The cached
    message is only ever copied into responses, never changed."""
    dev = pb.Device(ID=state.id, health=HEALTHY if state.healthy else UNHEALTHY)
    if state.numa_node is not None:
        dev.topology.nodes.add(ID=state.numa_node)
    return dev


def to_list_response(states: list[DeviceState]) -> pb.ListAndWatchResponse:
    return pb.ListAndWatchResponse(devices=[to_device(s) for s in states])


def to_container_response(alloc: ContainerAllocation) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=alloc.envs,
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in alloc.mounts
        ],
        devices=[
            pb.DeviceSpec(
                container_path=d.container_path, host_path=d.host_path, permissions=d.permissions
            )
            for d in alloc.devices
        ],
        annotations=alloc.annotations,
        cdi_devices=[pb.CDIDevice(name=name) for name in alloc.cdi_devices],
    )


def plugin_options() -> pb.DevicePluginOptions:
    """What kubelet learns at registration and from GetDevicePluginOptions: same answer both."""
    return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


# --- the server -----------------------------------------------------------------------------


class _Run:
    """One serving period; streams hold on to it so a later start() cannot revive them."""

    def __init__(self) -> None:
        self.stopping = threading.Event()


class DevicePluginServer:
    """Serves one PoolHandler as a kubelet device plugin on `<plugin_dir>/<socket_name>`.

    The handler is called from gRPC worker threads, possibly concurrently; it must be thread-safe.
    After kubelet wipes the folder, `stop()` then `start()` serves again on a fresh socket.
    """

    def __init__(
        self,
        handler: PoolHandler,
        plugin_dir: str,
        socket_name: str | None = None,
        max_workers: int = 8,
    ) -> None:
        self.handler = handler
        self.resource_name = handler.resource_name
        self.socket_name = socket_name or default_socket_name(handler.resource_name)
        self.socket_path = os.path.join(plugin_dir, self.socket_name)
        self._unix = UnixGrpcServer(self.socket_path, self._add_servicers, max_workers)
        self._lock = threading.Lock()  # start/stop
        self._cond = threading.Condition()
        self._generation = 0
        self._streams = 0
        self._run: _Run | None = None

    def _add_servicers(self, server: grpc.Server) -> None:
        pb_grpc.add_DevicePluginServicer_to_server(_Servicer(self), server)

    @property
    def serving(self) -> bool:
        return self._run is not None

    @property
    def active_streams(self) -> int:
        """ListAndWatch RPCs not yet over (for readiness and metrics)."""
        with self._cond:
            return self._streams

    def start(self) -> None:
        """Listen on the socket; a no-op while serving. Raises ServeError."""
        with self._lock:
            if self._run is not None:
                return
            self._run = _Run()  # before the socket appears: a stream may arrive at once
            try:
                self._unix.start()
            except BaseException:
                self._run = None
                raise
        log.info("serving %s on %s", self.resource_name, self.socket_path)

    def stop(self, grace: float | None = 1.0) -> None:
        """End every ListAndWatch stream cleanly, stop serving, unlink the socket."""
        with self._lock:
            run, self._run = self._run, None
            if run is None:
                return
            run.stopping.set()
            with self._cond:  # let the streams finish with status OK before the server goes
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._streams <= 0, grace or 0.0)
            self._unix.stop(grace)
        log.info("stopped serving %s", self.resource_name)

    def notify(self) -> None:
        """The device list changed: every stream sends a new full list. Never blocks on streams."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _wait_newer(self, seen: int | None, run: _Run, ended: threading.Event) -> int | None:
        """Block until a generation newer than `seen`; None when the stream must end."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._generation != seen or run.stopping.is_set() or ended.is_set()
            )
            if run.stopping.is_set() or ended.is_set():
                return None
            return self._generation

    # ListAndWatch body, here rather than in the servicer because it owns the condition.
    def _list_and_watch(self, context: grpc.ServicerContext) -> Iterator[pb.ListAndWatchResponse]:
        run = self._run
        if run is None:
            return
        ended = threading.Event()

        def on_end() -> None:  # grpc: the RPC is over (status sent, client gone, or cancelled)
            ended.set()
            with self._cond:
                self._streams -= 1
                self._cond.notify_all()
            log.info("ListAndWatch for %s ended", self.resource_name)

        with self._cond:
            self._streams += 1
        if not context.add_callback(on_end):
            with self._cond:
                self._streams -= 1
                self._cond.notify_all()
            return
        log.info("kubelet opened ListAndWatch for %s", self.resource_name)
        seen: int | None = -1
        while True:
            seen = self._wait_newer(seen, run, ended)
            if seen is None:
                return
            try:
                states = self.handler.device_states()
            except Exception as e:
                log.exception("device_states() of %s failed", self.resource_name)
                context.abort(grpc.StatusCode.INTERNAL, f"device list unavailable: {e}")
            yield to_list_response(states)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class _Servicer(pb_grpc.DevicePluginServicer):
    """Wire adapter: protobuf in, handler call, protobuf out; errors become gRPC statuses."""

    def __init__(self, owner: DevicePluginServer) -> None:
        self._owner = owner
        self._handler = owner.handler

    def GetDevicePluginOptions(self, request: pb.Empty, context: grpc.ServicerContext):
        return plugin_options()

    def ListAndWatch(self, request: pb.Empty, context: grpc.ServicerContext):
        return self._owner._list_and_watch(context)

    def Allocate(self, request: pb.AllocateRequest, context: grpc.ServicerContext):
        requests = [list(c.devices_ids) for c in request.container_requests]
        try:
            allocs = self._handler.allocate(requests)
        except AllocationError as e:
            log.warning("Allocate %s %s refused: %s", self._owner.resource_name, requests, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _one_line(e))
        except Exception as e:
            log.exception("Allocate %s %s failed", self._owner.resource_name, requests)
            context.abort(grpc.StatusCode.INTERNAL, _one_line(e))
        if len(allocs) != len(requests):
            log.error(
                "handler of %s answered %d containers for %d",
                self._owner.resource_name,
                len(allocs),
                len(requests),
            )
            context.abort(grpc.StatusCode.INTERNAL, "allocation does not match the request")
        log.info("Allocate %s %s", self._owner.resource_name, requests)
        return pb.AllocateResponse(container_responses=[to_container_response(a) for a in allocs])

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ):
        out = pb.PreferredAllocationResponse()
        for c in request.container_requests:
            try:
                ids = self._handler.preferred_allocation(
                    list(c.available_deviceIDs), list(c.must_include_deviceIDs), c.allocation_size
                )
            except AllocationError as e:
                log.warning("GetPreferredAllocation %s refused: %s", self._owner.resource_name, e)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _one_line(e))
            except Exception as e:
                log.exception("GetPreferredAllocation %s failed", self._owner.resource_name)
                context.abort(grpc.StatusCode.INTERNAL, _one_line(e))
            out.container_responses.add(deviceIDs=ids)
        return out

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ):
        return pb.PreStartContainerResponse()
