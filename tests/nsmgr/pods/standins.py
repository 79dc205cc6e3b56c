"""Stand-ins for what the pod integration talks to, for tests.

- `PodResourcesStandIn`: kubelet's pod-resources v1 (List, Get) on a real unix socket. As kubelet:
  a pod it does not know is answered UNKNOWN "pod <name> in namespace <ns> not found" (a plain Go
  error, so gRPC status Unknown, not NotFound); a disabled Get (feature gate
  KubeletPodResourcesGet off, the default before 1.34) UNKNOWN "PodResources API Get method
  disabled"; one ContainerDevices per device and NUMA node.
- `CriStandIn`: the CRI RuntimeService subset (Version, ListPodSandbox, PodSandboxStatus) as
  containerd serves it: the filter's id, state and label selector all must match (labels exactly),
  an unknown sandbox is NotFound, verbose status carries info["info"], containerd's JSON with the
  OCI runtimeSpec (linux.namespaces[type=network].path) and the sandbox pid.
- `RecordingAgent`: a ConnectionAgent that records every call and can be told to fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from typing import Self

import grpc

from nsmgr.model import AttachRequest, ConnectionInfo, RequestError
from sriov_nsm_wire.cri.runtime.v1 import api_pb2 as cri
from sriov_nsm_wire.cri.runtime.v1 import api_pb2_grpc as cri_grpc
from sriov_nsm_wire.podresources.v1 import api_pb2 as pr
from sriov_nsm_wire.podresources.v1 import api_pb2_grpc as pr_grpc

WAIT = 10.0  # upper bound of every wait; a passing run never gets near it


def _serve(path: str, add: Callable[[grpc.Server], None]) -> grpc.Server:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add(server)
    server.add_insecure_port("unix:" + path)
    server.start()
    return server


class _Served:
    """start/stop/context manager around one gRPC server on a unix socket."""

    socket_path: str
    _server: grpc.Server | None = None

    def _add(self, server: grpc.Server) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._server = _serve(self.socket_path, self._add)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(0).wait(5.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- kubelet pod-resources ------------------------------------------------------------------


@dataclass
class _KubeletPod:
    # container -> resource -> [(device id, NUMA nodes)]
    containers: dict[str, dict[str, list[tuple[str, tuple[int, ...]]]]] = field(
        default_factory=dict
    )


class PodResourcesStandIn(_Served):
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


# --- CRI runtime ----------------------------------------------------------------------------


@dataclass
class Sandbox:
    id: str
    uid: str
    name: str
    namespace: str
    netns: str  # "" when the runtime spec names no path
    created_at: int
    state: int = cri.SANDBOX_READY
    pid: int = 0
    host_network: bool = False
    attempt: int = 0

    @property
    def labels(self) -> dict[str, str]:
        # what kubelet puts on every sandbox (newPodSandboxLabels)
        return {
            "io.kubernetes.pod.name": self.name,
            "io.kubernetes.pod.namespace": self.namespace,
            "io.kubernetes.pod.uid": self.uid,
        }


class CriStandIn(_Served):
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._sandboxes: dict[str, Sandbox] = {}
        self._n = 0

    def _add(self, server: grpc.Server) -> None:
        cri_grpc.add_RuntimeServiceServicer_to_server(_RuntimeServicer(self), server)

    def run_pod(
        self,
        uid: str,
        name: str,
        namespace: str = "default",
        netns: str = "",
        *,
        pid: int = 0,
        host_network: bool = False,
    ) -> Sandbox:
        """RunPodSandbox as kubelet asks it: a READY sandbox, newer than every earlier one."""
        with self._lock:
            self._n += 1
            sid = f"{self._n:02d}" + os.urandom(31).hex()
            created = time.time_ns() + self._n
            sb = Sandbox(
                sid, uid, name, namespace, netns, created, pid=pid, host_network=host_network
            )
            self._sandboxes[sid] = sb
            return sb

    def stop_pod(self, sandbox_id: str) -> None:
        with self._lock:
            sb = self._sandboxes[sandbox_id]
            self._sandboxes[sandbox_id] = replace(sb, state=cri.SANDBOX_NOTREADY)

    def remove_pod(self, sandbox_id: str) -> None:
        with self._lock:
            self._sandboxes.pop(sandbox_id, None)

    def sandboxes(self) -> list[Sandbox]:
        with self._lock:
            return list(self._sandboxes.values())


def _sandbox_info(sb: Sandbox) -> str:
    """containerd's verbose sandbox info (SandboxInfo, JSON tags as containerd writes them)."""
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}]
    if not sb.host_network:
        namespaces.append({"type": "network", **({"path": sb.netns} if sb.netns else {})})
    return json.dumps(
        {
            "pid": sb.pid,
            "processStatus": "running" if sb.state == cri.SANDBOX_READY else "stopped",
            "netNamespaceClosed": sb.state != cri.SANDBOX_READY,
            "image": "registry.k8s.io/pause:3.9",
            "snapshotKey": sb.id,
            "snapshotter": "overlayfs",
            "runtimeHandler": "",
            "runtimeType": "io.containerd.runc.v2",
            "runtimeOptions": {"systemd_cgroup": True},
            "config": {
                "metadata": {"name": sb.name, "uid": sb.uid, "namespace": sb.namespace},
                "labels": sb.labels,
            },
            "runtimeSpec": {
                "ociVersion": "1.1.0",
                "process": {"args": ["/pause"]},
                "linux": {
                    "cgroupsPath": f"kubepods-besteffort-pod{sb.uid.replace('-', '_')}.slice"
                    f":cri-containerd:{sb.id}",
                    "namespaces": namespaces,
                },
            },
            "cniResult": None,
        }
    )


class _RuntimeServicer(cri_grpc.RuntimeServiceServicer):
    def __init__(self, owner: CriStandIn) -> None:
        self._owner = owner

    def Version(self, request: cri.VersionRequest, context: grpc.ServicerContext):
        self._owner.calls.append("Version")
        return cri.VersionResponse(
            version="0.1.0",
            runtime_name="containerd",
            runtime_version="v1.7.24",
            runtime_api_version="v1",
        )

    def ListPodSandbox(self, request: cri.ListPodSandboxRequest, context: grpc.ServicerContext):
        self._owner.calls.append("ListPodSandbox")
        f = request.filter
        items = []
        for sb in self._owner.sandboxes():
            if f.id and f.id != sb.id:
                continue
            if f.HasField("state") and f.state.state != sb.state:
                continue
            if any(sb.labels.get(k) != v for k, v in f.label_selector.items()):
                continue
            items.append(
                cri.PodSandbox(
                    id=sb.id,
                    metadata=cri.PodSandboxMetadata(
                        name=sb.name, uid=sb.uid, namespace=sb.namespace, attempt=sb.attempt
                    ),
                    state=sb.state,
                    created_at=sb.created_at,
                    labels=sb.labels,
                )
            )
        return cri.ListPodSandboxResponse(items=items)

    def PodSandboxStatus(self, request: cri.PodSandboxStatusRequest, context: grpc.ServicerContext):
        self._owner.calls.append("PodSandboxStatus")
        sb = next((s for s in self._owner.sandboxes() if s.id == request.pod_sandbox_id), None)
        if sb is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, "an error occurred when try to find sandbox: not found"
            )
        mode = cri.NODE if sb.host_network else cri.POD
        status = cri.PodSandboxStatus(
            id=sb.id,
            metadata=cri.PodSandboxMetadata(name=sb.name, uid=sb.uid, namespace=sb.namespace),
            state=sb.state,
            created_at=sb.created_at,
            linux=cri.LinuxPodSandboxStatus(
                namespaces=cri.Namespace(options=cri.NamespaceOption(network=mode, pid=cri.POD))
            ),
            labels=sb.labels,
        )
        info = {"info": _sandbox_info(sb)} if request.verbose else {}
        return cri.PodSandboxStatusResponse(status=status, info=info)


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
