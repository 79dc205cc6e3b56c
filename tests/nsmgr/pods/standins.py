"""Stand-ins for what the pod integration talks to, for tests.

- `PodResourcesStandIn`: kubelet's pod-resources v1 (List, Get) on a real unix socket. As kubelet:
  a pod it does not know is answered UNKNOWN "pod <name> in namespace <ns> not found" (a plain Go
  error, so gRPC status Unknown, not NotFound); a disabled Get (feature gate
  KubeletPodResourcesGet off, the default before 1.34) UNKNOWN "PodResources API Get method
  disabled"; one ContainerDevices per device and NUMA node.
- `CriStandIn`: the CRI RuntimeService stand-in, now in `lab.cri` (the lab's node runs it too);
  re-exported here with `Sandbox`.
- `RecordingAgent`: a ConnectionAgent that records every call and can be told to fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from lab.cri import CriStandIn, Sandbox, Served
from nsmgr.model import AttachRequest, ConnectionInfo, RequestError
from sriov_nsm_wire.podresources.v1 import api_pb2 as pr
from sriov_nsm_wire.podresources.v1 import api_pb2_grpc as pr_grpc

__all__ = ["WAIT", "CriStandIn", "PodResourcesStandIn", "RecordingAgent", "Sandbox"]

WAIT = 10.0  # upper bound of every wait; a passing run never gets near it


# --- kubelet pod-resources ------------------------------------------------------------------


@dataclass
class _KubeletPod:
    # container -> resource -> [(device id, NUMA nodes)]
    containers: dict[str, dict[str, list[tuple[str, tuple[int, ...]]]]] = field(
        default_factory=dict
    )


class PodResourcesStandIn(Served):
    def __init__(self, socket_path: str, *, get_enabled: bool = True) -> None:
        self.socket_path = socket_path
        self.get_enabled = get_enabled
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], _KubeletPod] = {}

    def _add(self, server: grpc.Server) -> None:
        pr_grpc.add_PodResourcesListerServicer_to_server(_PodResourcesServicer(self), server)

    def admit(
        self,
        namespace: str,
        name: str,
        devices: Mapping[str, Sequence[str]] | None = None,
        *,
        container: str = "c0",
        numa: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """Kubelet admitted the pod; `devices` (resource -> ids) go to `container`."""
        with self._lock:
            pod = self._pods.setdefault((namespace, name), _KubeletPod())
            held = pod.containers.setdefault(container, {})
            for resource, ids in (devices or {}).items():
                held.setdefault(resource, []).extend(
                    (i, tuple((numa or {}).get(i, (0,)))) for i in ids
                )

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def message(self, namespace: str, name: str) -> pr.PodResources:
        with self._lock:
            pod = self._pods[(namespace, name)]
            containers = []
            for cname, resources in pod.containers.items():
                devs = [
                    pr.ContainerDevices(
                        resource_name=resource,
                        device_ids=[dev],
                        topology=pr.TopologyInfo(nodes=[pr.NUMANode(ID=n)]),
                    )
                    for resource, held in resources.items()
                    for dev, nodes in held
                    for n in nodes
                ]
                containers.append(pr.ContainerResources(name=cname, devices=devs))
        return pr.PodResources(name=name, namespace=namespace, containers=containers)

    def known(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._pods)


class _PodResourcesServicer(pr_grpc.PodResourcesListerServicer):
    def __init__(self, owner: PodResourcesStandIn) -> None:
        self._owner = owner

    def List(self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext):
        self._owner.calls.append("List")
        return pr.ListPodResourcesResponse(
            pod_resources=[self._owner.message(ns, n) for ns, n in self._owner.known()]
        )

    def Get(self, request: pr.GetPodResourcesRequest, context: grpc.ServicerContext):
        self._owner.calls.append("Get")
        if not self._owner.get_enabled:
            context.abort(grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
        key = (request.pod_namespace, request.pod_name)
        if key not in self._owner.known():
            context.abort(
                grpc.StatusCode.UNKNOWN,
                f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
            )
        return pr.GetPodResourcesResponse(pod_resources=self._owner.message(*key))

    def GetAllocatableResources(self, request, context: grpc.ServicerContext):
        return pr.AllocatableResourcesResponse()


# --- the agent ------------------------------------------------------------------------------


class RecordingAgent:
    """A ConnectionAgent that keeps connections in a dict and records calls in order.

    `refuse[pci] = message` makes requests for that VF raise RequestError; `fail_requests = n`
    makes the next n requests raise RuntimeError; `mechanism[pci]` is what it reports.
    """

    def __init__(self, connections: Sequence[ConnectionInfo] = ()) -> None:
        self.conns: dict[str, ConnectionInfo] = {c.id: c for c in connections}
        self.calls: list[tuple[str, str]] = []
        self.requests: list[AttachRequest] = []
        self.refuse: dict[str, str] = {}
        self.fail_requests = 0
        self.mechanism: dict[str, str] = {}
        self._cond = threading.Condition()

    def request(self, req: AttachRequest) -> ConnectionInfo:
        req.validate()
        with self._cond:
            self.calls.append(("request", req.connection_id))
            self.requests.append(req)
            self._cond.notify_all()
            if self.fail_requests:
                self.fail_requests -= 1
                raise RuntimeError("agent busy")
            if req.pci_address in self.refuse:
                raise RequestError(self.refuse[req.pci_address])
            info = ConnectionInfo(
                id=req.connection_id,
                service=str(req.service),
                pci_address=req.pci_address,
                ifname=req.ifname,
                netns=req.netns,
                state="attached",
                mechanism=self.mechanism.get(req.pci_address, "KERNEL"),
                pod=req.pod,
            )
            self.conns[info.id] = info
            return info

    def close(self, connection_id: str) -> None:
        with self._cond:
            self.calls.append(("close", connection_id))
            self._cond.notify_all()
            if self.conns.pop(connection_id, None) is None:
                raise RequestError(f"no connection {connection_id}")

    def connections(self) -> list[ConnectionInfo]:
        with self._cond:
            return list(self.conns.values())

    def wait_for(self, predicate: Callable[[RecordingAgent], bool], timeout: float = WAIT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"agent never got there; calls: {self.calls}")

    def count(self, kind: str, connection_id: str) -> int:
        with self._cond:
            return self.calls.count((kind, connection_id))
