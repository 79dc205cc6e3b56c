"""Which VFs a pod holds, from kubelet's pod-resources API v1 (List and Get).

The device plugin's device IDs are PCI addresses, so a pod's VFs are the device IDs of the
resources that count as VFs (all, or those under the configured prefixes such as
`example.com/`) that look like PCI addresses. Kubelet reports devices from sets, in no stable
order, so they are sorted: the n-th service of a pod pairs with the n-th address, on every run.

Kubelet answers an unknown pod with status UNKNOWN ("pod x in namespace y not found"), and a
disabled Get (feature gate KubeletPodResourcesGet, default on from 1.34) with UNKNOWN too; both
are told apart by message, and a disabled or unimplemented Get makes this client use List.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from nicinventory.model import PCI_ADDRESS_RE
from nsmgr.pods.errors import PodResourcesError
from sriov_nsm_wire.podresources.v1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
_MAX_MESSAGE = 16 * 1024 * 1024  # a node with many pods answers List with a large message
# gRPC's reconnect pause grows to 120 s by default: a restarted kubelet or runtime would be
# ignored for up to two minutes; local sockets are cheap to retry
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


@dataclass(frozen=True)
class PodDevice:
    """One VF a pod holds."""

    pci_address: str
    resource: str
    container: str


def grpc_target(endpoint: str) -> str:
    """A gRPC target for a socket given as a path or a unix:// URL."""
    if endpoint.startswith("unix:"):
        return endpoint
    return "unix:" + endpoint


class PodResourcesClient:
    """A thin client over one channel; gRPC reconnects by itself when kubelet restarts."""

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        resource_prefixes: Sequence[str] = (),
        *,
        timeout: float = 5.0,
    ) -> None:
        self.socket_path = socket_path
        # a bare domain means its resources: "example.com" must not match "example.com.evil/x"
        self.resource_prefixes = tuple(p if "/" in p else p + "/" for p in resource_prefixes)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            grpc_target(socket_path),
            options=[*CHANNEL_OPTIONS, ("grpc.max_receive_message_length", _MAX_MESSAGE)],
        )
        self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        self._use_get = True

    def close(self) -> None:
        self._channel.close()

    def counts(self, resource: str) -> bool:
        return not self.resource_prefixes or resource.startswith(self.resource_prefixes)

    def devices(self, namespace: str, name: str) -> list[PodDevice]:
        """The VFs one pod holds, sorted by PCI address; [] when kubelet does not know the pod
        (yet) or it holds none. Raises PodResourcesError when kubelet cannot be asked."""
        if self._use_get:
            request = api_pb2.GetPodResourcesRequest(pod_name=name, pod_namespace=namespace)
            try:
                resp = self._stub.Get(request, timeout=self.timeout)
                return self._vfs([resp.pod_resources])
            except grpc.RpcError as e:
                if _not_found(e):
                    return []
                if not _get_unavailable(e):
                    raise _error("Get", e) from e
                log.info("pod-resources Get is not available (%s): using List", e.details())
                self._use_get = False
        return self.list_all().get((namespace, name), [])

    def list_all(self) -> dict[tuple[str, str], list[PodDevice]]:
        """(namespace, name) -> VFs, for every pod kubelet reports (one List call)."""
        try:
            resp = self._stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error("List", e) from e
        return {(p.namespace, p.name): self._vfs([p]) for p in resp.pod_resources}

    def _vfs(self, pods: Iterable[api_pb2.PodResources]) -> list[PodDevice]:
        seen: dict[str, PodDevice] = {}
        for pod in pods:
            for container in pod.containers:
                for devs in container.devices:
                    if not self.counts(devs.resource_name):
                        continue
                    for dev in devs.device_ids:
                        # one entry per device and NUMA node: keep the first
                        if PCI_ADDRESS_RE.match(dev) and dev not in seen:
                            seen[dev] = PodDevice(dev, devs.resource_name, container.name)
        return [seen[k] for k in sorted(seen)]


def _not_found(e: grpc.RpcError) -> bool:
    code = e.code()
    return code == grpc.StatusCode.NOT_FOUND or (
        code == grpc.StatusCode.UNKNOWN and "not found" in (e.details() or "")
    )


def _get_unavailable(e: grpc.RpcError) -> bool:
    code = e.code()
    return code == grpc.StatusCode.UNIMPLEMENTED or (
        code == grpc.StatusCode.UNKNOWN and "disabled" in (e.details() or "")
    )


def _error(call: str, e: grpc.RpcError) -> PodResourcesError:
    return PodResourcesError(f"pod-resources {call} failed: {e.code().name}: {e.details()}")
