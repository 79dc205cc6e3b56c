"""A kubelet stand-in that speaks the real gRPC APIs over unix sockets, for tests and the lab.

It behaves like kubelet's device manager where a device plugin can tell the difference:

- on start it deletes every socket in its folder except its checkpoint file (kubelet's
  CleanupPluginDirectory), then serves v1beta1 `Registration` on `<dir>/kubelet.sock`;
- `Register` checks the version and that the name is an extended resource name, dials the
  plugin back at `<dir>/<endpoint>` (the plugin must already serve), calls
  GetDevicePluginOptions, and only then answers; ListAndWatch runs in a thread of its own;
- admission (`admit`) takes healthy devices no pod holds, asks GetPreferredAllocation when the
  plugin offers it, then calls Allocate with one container per request, as kubelet does;
- `restart()` drops every plugin connection, wipes the sockets and listens anew, keeping the
  pods' allocations (kubelet keeps them in its checkpoint).

One deliberate difference: a second registration of a resource whose plugin is still alive is
rejected (`duplicates="reject"`, the default) so a plugin that registers twice is caught; current
kubelet accepts it and keeps both clients, older ones replaced the first (`duplicates="replace"`).
`duplicates="accept"` (the lab's node) is closest to current kubelet: a live plugin registering
again at the same endpoint (Register and the plugin watcher both) is accepted and its connection
kept; a different endpoint replaces it.

Errors kubelet would return to a plugin are gRPC status UNKNOWN with kubelet's kind of message,
because kubelet returns plain Go errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Literal

import grpc

from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2 as dp_pb
from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2_grpc as dp_grpc
from sriov_nsm_wire.pluginregistration.v1 import api_pb2 as reg_pb
from sriov_nsm_wire.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from sriov_nsm_wire.podresources.v1 import api_pb2 as pr_pb
from sriov_nsm_wire.podresources.v1 import api_pb2_grpc as pr_grpc

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("v1beta1",)
KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT_FILE = "kubelet_internal_checkpoint"
HEALTHY = "Healthy"

_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class StandInError(Exception):
    """Something kubelet would have refused or failed at; the message is kubelet's kind."""


class AdmissionError(StandInError):
    """Kubelet would not admit the pod (UnexpectedAdmissionError)."""


def is_extended_resource_name(name: str) -> bool:
    """Kubelet's v1helper.IsExtendedResourceName: `domain/name`, not in kubernetes.io."""
    if "/" not in name or name.startswith("requests."):
        return False
    domain, _, short = name.partition("/")
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return False
    if "/" in short or not short or len(short) > 63 or not _QUALIFIED.match(short):
        return False
    return len(domain) <= 253 and bool(_DNS_SUBDOMAIN.match(domain))


@dataclass(frozen=True)
class SeenDevice:
    """One device as the stand-in last received it on ListAndWatch."""

    id: str
    health: str
    numa_nodes: tuple[int, ...]

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY


@dataclass(frozen=True)
class PodAllocation:
    """What kubelet remembers per container (its checkpoint's PodDeviceEntries)."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class RegisterAttempt:
    resource: str
    endpoint: str
    accepted: bool
    error: str = ""


class _Endpoint:
    """One connected plugin: kubelet's device-plugin client for a resource."""

    def __init__(
        self,
        resource: str,
        socket_path: str,
        channel: grpc.Channel,
        options: dp_pb.DevicePluginOptions,
    ) -> None:
        self.resource = resource
        self.socket_path = socket_path
        self.channel = channel
        self.stub = dp_grpc.DevicePluginStub(channel)
        self.options = options
        self.inode = _inode(socket_path)
        self.devices: dict[str, SeenDevice] | None = None  # None until the first list
        self.updates = 0
        self.alive = True
        self.end_code: grpc.StatusCode | None = None
        self.call: grpc.Future | None = None
        self.thread: threading.Thread | None = None

    def still_there(self) -> bool:
        """Alive and its socket is the one we dialed (a restarted plugin makes a new file)."""
        return self.alive and self.inode is not None and _inode(self.socket_path) == self.inode

    def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        self.channel.close()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(5.0)


def _inode(path: str) -> tuple[int, int, int] | None:
    """Identity of a socket file; ctime tells a re-created file from one with a reused inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def _dial(socket_path: str, timeout: float) -> grpc.Channel:
    """Like kubelet's dial(): block until connected or fail after `timeout`."""
    channel = grpc.insecure_channel("unix:" + socket_path)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError as e:
        channel.close()
        raise StandInError(f"failed to dial device plugin: {socket_path}: timed out") from e
    return channel


def _start_server(path: str, add: Callable[[grpc.Server], None], workers: int) -> grpc.Server:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    add(server)
    server.add_insecure_port("unix:" + path)
    server.start()
    return server


class KubeletStandIn:
    """The device manager side of kubelet, on `<plugin_dir>/kubelet.sock`."""

    def __init__(
        self,
        plugin_dir: str,
        *,
        dial_timeout: float = 5.0,
        call_timeout: float = 5.0,
        duplicates: Literal["reject", "replace", "accept"] = "reject",
        duplicate_grace: float = 0.5,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.socket_path = os.path.join(plugin_dir, KUBELET_SOCKET)
        self.dial_timeout = dial_timeout
        self.call_timeout = call_timeout
        self.duplicates = duplicates
        self.duplicate_grace = duplicate_grace
        self.attempts: list[RegisterAttempt] = []
        self._cond = threading.Condition()
        # one registration at a time: simpler to reason about, and kubelet's order is not a contract
        self._register_lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._allocations: list[PodAllocation] = []
        self._server: grpc.Server | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> KubeletStandIn:
        os.makedirs(self.plugin_dir, exist_ok=True)
        self._cleanup_plugin_dir()
        self._server = _start_server(
            self.socket_path,
            lambda s: dp_grpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), s),
            workers=4,
        )
        return self

    def stop(self) -> None:
        """Kubelet going away: every plugin connection closes, its socket is gone."""
        with self._cond:
            endpoints = list(self._endpoints.values())
            self._endpoints.clear()
            self._cond.notify_all()
        for ep in endpoints:
            ep.close()
        server, self._server = self._server, None
        if server is not None:
            server.stop(0).wait(5.0)

    def restart(self) -> None:
        """Kubelet restarting: forget the plugins, wipe the sockets, listen on a new kubelet.sock."""
        self.stop()
        self.start()

    def __enter__(self) -> KubeletStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cleanup_plugin_dir(self) -> None:
        for name in os.listdir(self.plugin_dir):
            if name == CHECKPOINT_FILE:
                continue
            path = os.path.join(self.plugin_dir, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass

    # -- registration (Register and the plugin watcher both end here) -------------------------
    def _on_register(self, request: dp_pb.RegisterRequest) -> None:
        resource = request.resource_name
        try:
            if request.version not in SUPPORTED_VERSIONS:
                raise StandInError(
                    f'requested API version "{request.version}" is not supported by kubelet. '
                    f"Supported versions are {list(SUPPORTED_VERSIONS)}"
                )
            if not is_extended_resource_name(resource):
                raise StandInError(f"resource name {resource} is not in the format of a/b")
            if not request.endpoint or "/" in request.endpoint:
                raise StandInError(
                    f"endpoint {request.endpoint!r} is not a file name in {self.plugin_dir}"
                )
            self.connect_plugin(resource, os.path.join(self.plugin_dir, request.endpoint))
        except StandInError as e:
            self.attempts.append(RegisterAttempt(resource, request.endpoint, False, str(e)))
            raise
        self.attempts.append(RegisterAttempt(resource, request.endpoint, True))

    def connect_plugin(self, resource: str, socket_path: str) -> None:
        """Kubelet's connectClient: dial, GetDevicePluginOptions, then ListAndWatch in a thread."""
        with self._register_lock:
            with self._cond:
                old = self._endpoints.get(resource)
                if old is not None and self.duplicates == "reject":
                    # a plugin that just restarted may register before its old stream's end
                    # reached us: give that a moment before calling it a duplicate
                    self._cond.wait_for(lambda: not old.still_there(), self.duplicate_grace)
            if old is not None and self.duplicates == "reject" and old.still_there():
                raise StandInError(
                    f"resource {resource} is already registered by a live plugin at {old.socket_path}"
                )
            if (
                old is not None
                and self.duplicates == "accept"
                and old.socket_path == socket_path
                and old.still_there()
            ):
                return  # the same plugin again (Register and plugin watcher): keep its stream
            channel = _dial(socket_path, self.dial_timeout)
            try:
                options = dp_grpc.DevicePluginStub(channel).GetDevicePluginOptions(
                    dp_pb.Empty(), timeout=self.call_timeout
                )
            except grpc.RpcError as e:
                channel.close()
                raise StandInError(
                    f"GetDevicePluginOptions of {resource} failed: {e.details()}"
                ) from e
            ep = _Endpoint(resource, socket_path, channel, options)
            ep.call = ep.stub.ListAndWatch(dp_pb.Empty())
            ep.thread = threading.Thread(
                target=self._watch, args=(ep,), name=f"law-{resource}", daemon=True
            )
            with self._cond:
                old = self._endpoints.get(resource)
                self._endpoints[resource] = ep
                self._cond.notify_all()
            if old is not None:
                old.close()
            ep.thread.start()
        log.info("kubelet stand-in: %s connected at %s", resource, socket_path)

    def disconnect_plugin(self, resource: str) -> None:
        """Kubelet's DeRegisterPlugin (the plugin watcher saw the registration socket go)."""
        with self._cond:
            ep = self._endpoints.pop(resource, None)
            self._cond.notify_all()
        if ep is not None:
            ep.close()

    def _watch(self, ep: _Endpoint) -> None:
        code = grpc.StatusCode.OK
        try:
            for resp in ep.call:
                devices = {
                    d.ID: SeenDevice(d.ID, d.health, tuple(n.ID for n in d.topology.nodes))
                    for d in resp.devices
                }
                with self._cond:
                    ep.devices = devices
                    ep.updates += 1
                    self._cond.notify_all()
        except grpc.RpcError as e:
            code = e.code()
        with self._cond:
            ep.alive = False
            ep.end_code = code
            self._cond.notify_all()
        log.info("kubelet stand-in: ListAndWatch of %s ended (%s)", ep.resource, code.name)

    # -- what kubelet knows --------------------------------------------------------------------
    def _endpoint(self, resource: str) -> _Endpoint:
        with self._cond:
            ep = self._endpoints.get(resource)
        if ep is None:
            raise StandInError(f"unknown Device Plugin {resource}")
        return ep

    def resources(self) -> list[str]:
        """Resources with a live plugin connection."""
        with self._cond:
            return sorted(r for r, ep in self._endpoints.items() if ep.alive)

    def options(self, resource: str) -> dp_pb.DevicePluginOptions:
        return self._endpoint(resource).options

    def endpoint_socket(self, resource: str) -> str:
        return self._endpoint(resource).socket_path

    def devices(self, resource: str) -> dict[str, SeenDevice]:
        """The latest list (empty before the first one)."""
        with self._cond:
            ep = self._endpoints.get(resource)
            return dict(ep.devices or {}) if ep else {}

    def updates(self, resource: str) -> int:
        with self._cond:
            ep = self._endpoints.get(resource)
            return ep.updates if ep else 0

    def wait_for_devices(
        self,
        resource: str,
        predicate: Callable[[dict[str, SeenDevice]], bool] | None = None,
        timeout: float = 5.0,
    ) -> dict[str, SeenDevice]:
        """Wait (bounded) for a list of `resource` satisfying `predicate` (any list if None)."""

        def ok() -> bool:
            ep = self._endpoints.get(resource)
            if ep is None or ep.devices is None:
                return False
            return predicate is None or predicate(ep.devices)

        with self._cond:
            if not self._cond.wait_for(ok, timeout):
                ep = self._endpoints.get(resource)
                seen = None if ep is None else ep.devices
                raise TimeoutError(f"no matching list for {resource} in {timeout}s; last: {seen}")
            return dict(self._endpoints[resource].devices or {})

    def wait_disconnected(self, resource: str, timeout: float = 5.0) -> grpc.StatusCode | None:
        """Wait (bounded) until no live plugin serves `resource`; returns how its stream ended."""

        def gone() -> bool:
            ep = self._endpoints.get(resource)
            return ep is None or not ep.alive

        with self._cond:
            if not self._cond.wait_for(gone, timeout):
                raise TimeoutError(f"{resource} still connected after {timeout}s")
            ep = self._endpoints.get(resource)
            return None if ep is None else ep.end_code

    # -- calls kubelet makes -------------------------------------------------------------------
    def allocate(
        self,
        resource: str,
        ids: list[str],
        *,
        pod: str | None = None,
        namespace: str = "default",
        container: str = "c0",
    ) -> dp_pb.ContainerAllocateResponse:
        """Allocate for one container, as kubelet sends it; records the pod when one is named.

        gRPC errors are raised as they come (grpc.RpcError), so tests can look at the status.
        """
        ep = self._endpoint(resource)
        request = dp_pb.AllocateRequest(
            container_requests=[dp_pb.ContainerAllocateRequest(devices_ids=ids)]
        )
        resp = ep.stub.Allocate(request, timeout=self.call_timeout)
        if len(resp.container_responses) != 1:
            raise StandInError(
                f"{len(resp.container_responses)} containers returned in allocation response"
            )
        if pod is not None:
            with self._cond:
                self._allocations.append(
                    PodAllocation(namespace, pod, container, resource, tuple(ids))
                )
                self._cond.notify_all()
        return resp.container_responses[0]

    def preferred(
        self, resource: str, available: list[str], must: list[str], size: int
    ) -> list[str]:
        """GetPreferredAllocation for one container; grpc.RpcError as it comes."""
        ep = self._endpoint(resource)
        request = dp_pb.PreferredAllocationRequest(
            container_requests=[
                dp_pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=must,
                    allocation_size=size,
                )
            ]
        )
        resp = ep.stub.GetPreferredAllocation(request, timeout=self.call_timeout)
        if len(resp.container_responses) != 1:
            raise StandInError("GetPreferredAllocation must answer one container per request")
        return list(resp.container_responses[0].deviceIDs)

    def admit(
        self,
        pod: str,
        resource: str,
        count: int,
        *,
        namespace: str = "default",
        container: str = "c0",
    ) -> dp_pb.ContainerAllocateResponse:
        """Admit one container asking for `count` devices, the way kubelet's device manager does."""
        ep = self._endpoint(resource)
        if not ep.alive:
            raise AdmissionError(f"device plugin of {resource} is not connected")
        with self._cond:
            held = {i for a in self._allocations if a.resource == resource for i in a.device_ids}
            healthy = [d.id for d in (ep.devices or {}).values() if d.healthy]
        available = [i for i in healthy if i not in held]
        if count > len(available):
            raise AdmissionError(
                f"requested number of devices unavailable for {resource}. "
                f"Requested: {count}, Available: {len(available)}"
            )
        chosen = available[:count]
        if ep.options.get_preferred_allocation_available:
            try:
                preferred = self.preferred(resource, available, [], count)
            except grpc.RpcError as e:
                raise AdmissionError(f"GetPreferredAllocation of {resource}: {e.details()}") from e
            if len(set(preferred)) == count and set(preferred) <= set(available):
                chosen = preferred
            else:  # kubelet fills up from what is available when the preference does not fit
                log.warning("kubelet stand-in: preferred %s does not fit; ignoring it", preferred)
        try:
            return self.allocate(
                resource, chosen, pod=pod, namespace=namespace, container=container
            )
        except grpc.RpcError as e:
            raise AdmissionError(f"Allocate of {resource}: {e.code().name}: {e.details()}") from e

    # -- pods ----------------------------------------------------------------------------------
    def allocations(self) -> list[PodAllocation]:
        with self._cond:
            return list(self._allocations)

    def release(self, pod: str, namespace: str = "default") -> int:
        """The pod went away: its devices are free for the next admission. Returns entries freed."""
        with self._cond:
            keep = [a for a in self._allocations if (a.namespace, a.pod) != (namespace, pod)]
            freed = len(self._allocations) - len(keep)
            self._allocations = keep
            self._cond.notify_all()
        return freed

    def all_devices(self) -> dict[str, dict[str, SeenDevice]]:
        """Every device of every connected plugin (what GetAllocatableResources reports)."""
        with self._cond:
            return {r: dict(ep.devices or {}) for r, ep in self._endpoints.items()}


class _RegistrationServicer(dp_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStandIn) -> None:
        self._kubelet = kubelet

    def Register(self, request: dp_pb.RegisterRequest, context: grpc.ServicerContext):
        try:
            self._kubelet._on_register(request)
        except StandInError as e:
            context.abort(grpc.StatusCode.UNKNOWN, str(e))
        return dp_pb.Empty()


# --- plugin watcher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatcherResult:
    socket_path: str
    name: str
    registered: bool
    error: str = ""


class PluginWatcherStandIn:
    """Kubelet's plugin watcher for `plugins_registry`, one explicit `scan()` at a time.

    For each new socket (dotfiles and non-sockets are ignored, as kubelet does): GetInfo,
    validate, hand DevicePlugin types to the device manager (which dials the absolute endpoint),
    then NotifyRegistrationStatus with the outcome. A socket that vanished deregisters its plugin.
    """

    def __init__(self, registry_dir: str, kubelet: KubeletStandIn, timeout: float = 5.0) -> None:
        self.registry_dir = registry_dir
        self.kubelet = kubelet
        self.timeout = timeout
        # socket path -> (file identity, resource name)
        self._known: dict[str, tuple[tuple[int, int, int] | None, str]] = {}

    def scan(self) -> list[WatcherResult]:
        results = []
        present = set()
        for name in sorted(os.listdir(self.registry_dir)):
            path = os.path.join(self.registry_dir, name)
            if name.startswith(".") or not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            present.add(path)
            inode = _inode(path)
            if path in self._known and self._known[path][0] == inode:
                continue
            result = self._register(path)
            self._known[path] = (inode, result.name)
            results.append(result)
        for path in [p for p in self._known if p not in present]:
            _, name = self._known.pop(path)
            if name:
                self.kubelet.disconnect_plugin(name)
        return results

    def _register(self, path: str) -> WatcherResult:
        channel = grpc.insecure_channel("unix:" + path)
        try:
            stub = reg_grpc.RegistrationStub(channel)
            try:
                info = stub.GetInfo(reg_pb.InfoRequest(), timeout=self.timeout)
            except grpc.RpcError as e:
                return WatcherResult(path, "", False, f"GetInfo failed: {e.details()}")
            error = self._validate_and_register(info)
            try:
                stub.NotifyRegistrationStatus(
                    reg_pb.RegistrationStatus(plugin_registered=not error, error=error),
                    timeout=self.timeout,
                )
            except grpc.RpcError as e:
                log.warning("NotifyRegistrationStatus to %s failed: %s", path, e.details())
            return WatcherResult(path, info.name, not error, error)
        finally:
            channel.close()

    def _validate_and_register(self, info: reg_pb.PluginInfo) -> str:
        if info.type != "DevicePlugin":
            return f"no handler registered for plugin type: {info.type}"
        if not set(info.supported_versions) & set(SUPPORTED_VERSIONS):
            return (
                f"manager version, {SUPPORTED_VERSIONS[0]}, is not among plugin supported "
                f"versions {list(info.supported_versions)}"
            )
        if not is_extended_resource_name(info.name):
            return f"invalid name of device plugin socket: {info.name}"
        if not os.path.isabs(info.endpoint):
            return f"endpoint {info.endpoint!r} is not an absolute path"
        try:
            self.kubelet.connect_plugin(info.name, info.endpoint)
        except StandInError as e:
            return str(e)
        return ""


# --- pod resources -------------------------------------------------------------------------------


class PodResourcesStandIn:
    """Kubelet's pod-resources v1 API on a given socket, fed by the stand-in's allocations."""

    def __init__(self, socket_path: str, kubelet: KubeletStandIn) -> None:
        self.socket_path = socket_path
        self.kubelet = kubelet
        self._server: grpc.Server | None = None

    def start(self) -> PodResourcesStandIn:
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        self._server = _start_server(
            self.socket_path,
            lambda s: pr_grpc.add_PodResourcesListerServicer_to_server(
                _PodResourcesServicer(self), s
            ),
            workers=2,
        )
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(0).wait(5.0)

    def __enter__(self) -> PodResourcesStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release(self, pod: str, namespace: str = "default") -> int:
        """The pod went away (deleted, finished): it no longer holds devices."""
        return self.kubelet.release(pod, namespace)

    def pod_resources(self) -> list[pr_pb.PodResources]:
        devices = self.kubelet.all_devices()
        pods: dict[tuple[str, str], dict[str, list[pr_pb.ContainerDevices]]] = {}
        for a in self.kubelet.allocations():
            containers = pods.setdefault((a.namespace, a.pod), {})
            out = containers.setdefault(a.container, [])
            known = devices.get(a.resource, {})
            for dev_id in a.device_ids:
                out.extend(_container_devices(a.resource, dev_id, known.get(dev_id)))
        return [
            pr_pb.PodResources(
                name=pod,
                namespace=ns,
                containers=[
                    pr_pb.ContainerResources(name=c, devices=devs) for c, devs in conts.items()
                ],
            )
            for (ns, pod), conts in pods.items()
        ]


def _container_devices(
    resource: str, dev_id: str, seen: SeenDevice | None
) -> list[pr_pb.ContainerDevices]:
    """One entry per device and NUMA node, as kubelet's containerDevicesFromResourceDeviceInstances."""
    if seen is None or not seen.numa_nodes:
        return [pr_pb.ContainerDevices(resource_name=resource, device_ids=[dev_id])]
    return [
        pr_pb.ContainerDevices(
            resource_name=resource,
            device_ids=[dev_id],
            topology=pr_pb.TopologyInfo(nodes=[pr_pb.NUMANode(ID=n)]),
        )
        for n in seen.numa_nodes
    ]


class _PodResourcesServicer(pr_grpc.PodResourcesListerServicer):
    def __init__(self, owner: PodResourcesStandIn) -> None:
        self._owner = owner

    def List(self, request: pr_pb.ListPodResourcesRequest, context: grpc.ServicerContext):
        return pr_pb.ListPodResourcesResponse(pod_resources=self._owner.pod_resources())

    def Get(self, request: pr_pb.GetPodResourcesRequest, context: grpc.ServicerContext):
        for pod in self._owner.pod_resources():
            if (pod.namespace, pod.name) == (request.pod_namespace, request.pod_name):
                return pr_pb.GetPodResourcesResponse(pod_resources=pod)
        context.abort(
            grpc.StatusCode.UNKNOWN,
            f"pod {request.pod_name} not found in namespace {request.pod_namespace}",
        )

    def GetAllocatableResources(
        self, request: pr_pb.AllocatableResourcesRequest, context: grpc.ServicerContext
    ):
        out = pr_pb.AllocatableResourcesResponse()
        for resource, devices in sorted(self._owner.kubelet.all_devices().items()):
            for dev in devices.values():
                out.devices.extend(_container_devices(resource, dev.id, dev))
        return out
