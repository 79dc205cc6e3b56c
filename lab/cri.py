"""A CRI RuntimeService stand-in (containerd's answers) on a real unix socket, for tests and the lab.

`CriStandIn` serves the subset nsmgr uses (Version, ListPodSandbox, PodSandboxStatus) as containerd
does: the filter's id, state and label selector all must match (labels exactly), an unknown sandbox
is NotFound, verbose status carries info["info"], containerd's JSON with the OCI runtimeSpec
(linux.namespaces[type=network].path) and the sandbox pid. Sandboxes are made and ended with
`run_pod`, `stop_pod` and `remove_pod`, the calls kubelet would make (the lab's node makes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, replace
from typing import Self

import grpc

from sriov_nsm_wire.cri.runtime.v1 import api_pb2 as cri
from sriov_nsm_wire.cri.runtime.v1 import api_pb2_grpc as cri_grpc


def serve_unix(path: str, add: Callable[[grpc.Server], None]) -> grpc.Server:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add(server)
    server.add_insecure_port("unix:" + path)
    server.start()
    return server


class Served:
    """start/stop/context manager around one gRPC server on a unix socket."""

    socket_path: str
    _server: grpc.Server | None = None

    def _add(self, server: grpc.Server) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._server = serve_unix(self.socket_path, self._add)
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


@dataclass
class Sandbox:
    """One pod sandbox as the runtime keeps it."""

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


class CriStandIn(Served):
    """containerd's RuntimeService subset on `socket_path`; `calls` lists the RPCs served, in
    order, unless `record_calls` is off (a long-running lab node must not grow it forever)."""

    def __init__(self, socket_path: str, *, record_calls: bool = True) -> None:
        self.socket_path = socket_path
        self.record_calls = record_calls
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

    def record(self, call: str) -> None:
        if self.record_calls:
            self.calls.append(call)

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
        self._owner.record("Version")
        return cri.VersionResponse(
            version="0.1.0",
            runtime_name="containerd",
            runtime_version="v1.7.24",
            runtime_api_version="v1",
        )

    def ListPodSandbox(self, request: cri.ListPodSandboxRequest, context: grpc.ServicerContext):
        self._owner.record("ListPodSandbox")
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
        self._owner.record("PodSandboxStatus")
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
