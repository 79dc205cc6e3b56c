"""Getting known to kubelet, and staying known across kubelet restarts.

Two ways in: the classic `Register` call on `<kubelet-dir>/kubelet.sock` (v1beta1), and kubelet's
plugin watcher, which finds a `*-reg.sock` in `plugins_registry` and asks it who we are. Kubelet
forgets every device plugin when it restarts, and on start it deletes every socket in the
device-plugins folder: `KubeletWatch` turns that into one `on_restart` call so the caller can
serve again and re-register.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import struct
import threading
from collections.abc import Callable

import grpc

from deviceplugin.server import API_VERSION, UnixGrpcServer, plugin_options, socket_stem
from deviceplugin.types import DevicePluginError
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2 as dp_pb
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from sriov_nsm_wire.pluginregistration.v1 import api_pb2 as reg_pb
from sriov_nsm_wire.pluginregistration.v1 import api_pb2_grpc as reg_grpc

log = logging.getLogger(__name__)

KUBELET_SOCKET = "kubelet.sock"
PLUGIN_TYPE = "DevicePlugin"


class RegistrationError(DevicePluginError):
    """Kubelet could not be reached or refused the registration."""


def register_with_kubelet(
    kubelet_socket: str, endpoint: str, resource_name: str, timeout: float = 5.0
) -> None:
    """Register one resource with kubelet; call only once its server is serving (kubelet dials back).

    `endpoint` is the socket file name relative to kubelet's folder; a path is reduced to its
    file name because kubelet joins it with its own folder.
    """
    name = os.path.basename(endpoint)
    request = dp_pb.RegisterRequest(
        version=API_VERSION, endpoint=name, resource_name=resource_name, options=plugin_options()
    )
    channel = grpc.insecure_channel("unix:" + os.path.abspath(kubelet_socket))
    try:
        dp_grpc.RegistrationStub(channel).Register(request, timeout=timeout)
    except grpc.RpcError as e:
        code = e.code().name if hasattr(e, "code") else "ERROR"
        details = " ".join((e.details() if hasattr(e, "details") else str(e)).split())
        raise RegistrationError(
            f"cannot register {resource_name} with kubelet at {kubelet_socket}: {code}: {details}"
        ) from e
    finally:
        channel.close()
    log.info("registered %s with kubelet (endpoint %s)", resource_name, name)


class PluginWatcherEndpoint:
    """The `pluginregistration` socket kubelet's plugin watcher discovers in `plugins_registry`.

    Kubelet calls GetInfo, dials the device plugin socket itself, then reports the outcome with
    NotifyRegistrationStatus, which we keep for readiness and log.
    """

    def __init__(self, registry_dir: str, resource_name: str, endpoint_path: str) -> None:
        self.resource_name = resource_name
        self.endpoint_path = os.path.abspath(endpoint_path)
        self.socket_path = os.path.join(registry_dir, socket_stem(resource_name) + "-reg.sock")
        self._unix = UnixGrpcServer(self.socket_path, self._add_servicers, max_workers=2)
        self._status = threading.Condition()
        self.plugin_registered: bool | None = None  # None: kubelet has not reported yet
        self.error = ""

    def _add_servicers(self, server: grpc.Server) -> None:
        reg_grpc.add_RegistrationServicer_to_server(_WatcherServicer(self), server)

    @property
    def serving(self) -> bool:
        return self._unix.serving

    def start(self) -> None:
        """Serve the registration socket; raises ServeError."""
        self._unix.start()
        log.info("plugin-watcher socket for %s at %s", self.resource_name, self.socket_path)

    def stop(self, grace: float | None = 0.5) -> None:
        self._unix.stop(grace)

    def wait_status(self, timeout: float) -> bool | None:
        """Wait (bounded) until kubelet reported; returns plugin_registered (None if it did not)."""
        with self._status:
            self._status.wait_for(lambda: self.plugin_registered is not None, timeout)
            return self.plugin_registered

    def _record(self, registered: bool, error: str) -> None:
        with self._status:
            self.plugin_registered = registered
            self.error = error
            self._status.notify_all()
        if registered:
            log.info("kubelet registered %s through the plugin watcher", self.resource_name)
        else:
            log.error("kubelet refused %s: %s", self.resource_name, error)


class _WatcherServicer(reg_grpc.RegistrationServicer):
    def __init__(self, owner: PluginWatcherEndpoint) -> None:
        self._owner = owner

    def GetInfo(self, request: reg_pb.InfoRequest, context: grpc.ServicerContext):
        return reg_pb.PluginInfo(
            type=PLUGIN_TYPE,
            name=self._owner.resource_name,
            endpoint=self._owner.endpoint_path,
            supported_versions=[API_VERSION],
        )

    def NotifyRegistrationStatus(
        self, request: reg_pb.RegistrationStatus, context: grpc.ServicerContext
    ):
        self._owner._record(request.plugin_registered, request.error)
        return reg_pb.RegistrationStatusResponse()


# --- noticing kubelet restarts ----------------------------------------------------------------

_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_WATCH_MASK = (
    _IN_ATTRIB
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class _Inotify:
    """Just enough inotify (libc via ctypes) to wake up when the folder changes."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd: int = fd
        self.watching = False

    def watch(self, folder: str) -> bool:
        """(Re)arm the watch; False while the folder does not exist."""
        self.watching = self._add(self.fd, os.fsencode(folder), _WATCH_MASK) >= 0
        return self.watching

    def drain(self) -> bool:
        """Read all pending events; True if any was read. Notes a lost watch."""
        got = False
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return got
            if not buf:
                return got
            got = True
            off = 0
            while off + _EVENT.size <= len(buf):
                _wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                off += _EVENT.size + length
                if mask & (_IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_Q_OVERFLOW):
                    self.watching = False

    def close(self) -> None:
        os.close(self.fd)


class KubeletWatch:
    """Calls `on_restart` when kubelet.sock is re-created or one of our sockets disappears.

    Decided from state, not from single events: kubelet's restart deletes our sockets and
    re-creates its own within microseconds, so events are collected for `settle` seconds and the
    folder is then compared with what was last seen, giving one call for the burst. inotify makes
    it prompt; a re-check every `poll_interval` seconds covers a folder that was re-created or an
    inotify that is unavailable. `on_restart` runs on the watch thread; its exceptions are logged.
    """

    def __init__(
        self,
        plugin_dir: str,
        own_sockets: Callable[[], list[str]],
        on_restart: Callable[[], None],
        kubelet_socket_name: str = KUBELET_SOCKET,
        poll_interval: float = 0.2,
        settle: float = 0.05,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.kubelet_socket = os.path.join(plugin_dir, kubelet_socket_name)
        self._own_sockets = own_sockets
        self._on_restart = on_restart
        self._poll = poll_interval
        self._settle = settle
        self._kubelet_id = self._kubelet_identity()
        self._reported_missing = self._missing()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopped = threading.Event()
        self.restarts = 0  # on_restart calls so far
        self.uses_inotify = False

    def _kubelet_identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.kubelet_socket)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_ctime_ns)

    def _missing(self) -> set[str]:
        return {p for p in self._own_sockets() if not os.path.exists(p)}

    def check(self) -> bool:
        """Compare the folder with what was last seen; call on_restart if kubelet restarted.

        Public so tests can drive it without the thread; do not call it while the thread runs.
        """
        kubelet_id = self._kubelet_identity()
        try:
            missing = self._missing()
        except Exception:  # the caller's list was mid-update: look again next round
            log.exception("own_sockets() failed; checking again shortly")
            return False
        recreated = kubelet_id is not None and kubelet_id != self._kubelet_id
        lost = missing - self._reported_missing
        self._kubelet_id = kubelet_id
        self._reported_missing = missing
        if not (recreated or lost):
            return False
        why = "kubelet.sock re-created" if recreated else f"socket removed: {sorted(lost)}"
        log.warning("kubelet restart noticed (%s): re-registering", why)
        self.restarts += 1
        try:
            self._on_restart()
        except Exception:
            log.exception("re-registration after kubelet restart failed")
        # sockets on_restart re-created are the new normal, not a loss; kubelet.sock is not
        # re-read, so a kubelet that came back during on_restart is noticed next time
        with contextlib.suppress(Exception):
            self._reported_missing = self._missing()
        return True

    def start(self) -> None:
        """Watch in a thread of its own until stop()."""
        if self._thread is not None:
            return
        self._stopped.clear()
        ino = self._open_inotify()
        self.uses_inotify = ino is not None
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(
            target=self._loop, args=(ino,), name="kubelet-watch", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopped.set()
        os.write(self._wake_w, b"x")
        thread.join(timeout)
        if thread.is_alive():  # stuck in on_restart: leave it its fds, it exits when it returns
            log.warning("kubelet watch still busy after %.1fs; leaving it to finish", timeout)
            return
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _open_inotify(self) -> _Inotify | None:
        try:
            ino = _Inotify()
        except (OSError, AttributeError) as e:
            log.info("inotify unavailable (%s): polling %s", e, self.plugin_dir)
            return None
        ino.watch(self.plugin_dir)
        return ino

    def _loop(self, ino: _Inotify | None) -> None:
        try:
            while not self._stopped.is_set():
                fds = [self._wake_r] + ([ino.fd] if ino else [])
                ready, _, _ = select.select(fds, [], [], self._poll)
                if self._stopped.is_set():
                    return
                try:
                    if ino is not None:
                        if ino.fd in ready and ino.drain():
                            # let the burst finish (kubelet wipes, then listens), then read it
                            if self._stopped.wait(self._settle):
                                return
                            ino.drain()
                        if not ino.watching:
                            ino.watch(self.plugin_dir)
                    self.check()
                except Exception:  # keep watching: missing a kubelet restart is the worst case
                    log.exception("kubelet watch round failed")
        finally:
            if ino is not None:
                ino.close()
