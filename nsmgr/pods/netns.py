"""Where a pod's network namespace is: asked of the container runtime (CRI), else found in /proc.

CRI runtime.v1: ListPodSandbox with the label kubelet puts on every sandbox
(io.kubernetes.pod.uid) and state READY, the newest sandbox wins (a restarted sandbox leaves its
old one NOTREADY); PodSandboxStatus verbose=true, whose info["info"] JSON (containerd, CRI-O)
holds the OCI runtimeSpec with linux.namespaces[type=network].path, or at least the sandbox pid.

The /proc fallback serves when the runtime cannot be asked (no socket, not runtime.v1) or its
answer names no path: a process whose cgroup path names the pod, in the cgroupfs form
(.../pod<uid>/...) or the systemd one (...-pod<uid with _ for ->.slice/...), in a network
namespace other than the host's; its /proc/<pid>/ns/net is the answer. A CRI answer that the pod
has no ready sandbox, or shares the host's network, is final: it is not second-guessed from /proc.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import grpc

from nsmgr.pods.errors import NetnsError
from nsmgr.pods.podresources import CHANNEL_OPTIONS, grpc_target
from sriov_nsm_wire.cri.runtime.v1 import api_pb2 as cri
from sriov_nsm_wire.cri.runtime.v1 import api_pb2_grpc as cri_grpc

log = logging.getLogger(__name__)

DEFAULT_CRI_ENDPOINT = "unix:///run/containerd/containerd.sock"
POD_UID_LABEL = "io.kubernetes.pod.uid"
_INODE_URL_RE = re.compile(r"^inode://(\d+)/(\d+)$")
# the runtime cannot be asked: these send us to /proc, anything else is a real answer
_CRI_ABSENT = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


def same_netns(a: str, b: str) -> bool:
    """Two names of one namespace: paths (a bind mount, /proc/<pid>/ns/net) or NSM's
    inode://<dev>/<ino>, which the agent may report instead of the path it was given."""
    if a == b:
        return True
    ia, ib = _ns_id(a), _ns_id(b)
    return ia is not None and ia == ib


def _ns_id(name: str) -> tuple[int, int] | None:
    m = _INODE_URL_RE.match(name)
    if m:
        return (int(m.group(1)), int(m.group(2)))
    try:
        st = os.stat(name)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _socket_path(endpoint: str) -> str | None:
    """The file behind a unix endpoint (unix:///p, unix:/p or /p); None for other targets."""
    if endpoint.startswith("unix://"):
        return endpoint[len("unix://") :]
    if endpoint.startswith("unix:"):
        return endpoint[len("unix:") :]
    return endpoint if endpoint.startswith("/") else None


class NetnsResolver:
    """Pod UID -> path of its network namespace. `cri_endpoint=""` means /proc only."""

    def __init__(
        self,
        cri_endpoint: str = DEFAULT_CRI_ENDPOINT,
        proc_root: str = "/proc",
        *,
        timeout: float = 2.0,
    ) -> None:
        self.cri_endpoint = cri_endpoint
        self.proc_root = proc_root
        self.timeout = timeout
        self._channel: grpc.Channel | None = None
        self._stub: cri_grpc.RuntimeServiceStub | None = None
        self._cri_state = ""  # last logged reason the CRI could not be used, to log it once
        if cri_endpoint:
            self._channel = grpc.insecure_channel(grpc_target(cri_endpoint), CHANNEL_OPTIONS)
            self._stub = cri_grpc.RuntimeServiceStub(self._channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def resolve(self, pod_uid: str) -> str:
        """The pod's netns path; NetnsError (one line) when there is none, or none yet."""
        path = self.from_cri(pod_uid)
        if path is not None:
            return path
        return self.from_proc(pod_uid)

    # -- CRI -------------------------------------------------------------------------------
    def from_cri(self, pod_uid: str) -> str | None:
        """The runtime's answer, or None when it cannot give one and /proc should be tried."""
        if self._stub is None:
            return None
        sock = _socket_path(self.cri_endpoint)
        if sock is not None and not os.path.exists(sock):
            self._cri_unusable(f"CRI socket {sock} does not exist")
            return None
        sandbox: cri.PodSandbox | None = None
        try:
            sandbox = self._ready_sandbox(pod_uid)
            if sandbox is None:
                raise NetnsError(f"pod {pod_uid} has no ready sandbox yet")
            status = self._stub.PodSandboxStatus(
                cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox.id, verbose=True),
                timeout=self.timeout,
            )
        except grpc.RpcError as e:
            if e.code() in _CRI_ABSENT:
                self._cri_unusable(f"CRI at {self.cri_endpoint}: {e.code().name}: {e.details()}")
                return None
            if e.code() == grpc.StatusCode.NOT_FOUND and sandbox is not None:
                # removed between the two calls
                raise NetnsError(f"pod {pod_uid}: sandbox {sandbox.id} is gone") from e
            raise NetnsError(f"CRI failed for pod {pod_uid}: {e.details()}") from e
        if self._cri_state:
            log.info("CRI at %s answers again", self.cri_endpoint)
            self._cri_state = ""
        if status.status.linux.namespaces.options.network == cri.NODE:
            raise NetnsError(f"pod {pod_uid} uses the host network: no namespace of its own")
        return self._path_from_info(pod_uid, status.info.get("info", ""))

    def _ready_sandbox(self, pod_uid: str) -> cri.PodSandbox | None:
        assert self._stub is not None
        request = cri.ListPodSandboxRequest(
            filter=cri.PodSandboxFilter(
                state=cri.PodSandboxStateValue(state=cri.SANDBOX_READY),
                label_selector={POD_UID_LABEL: pod_uid},
            )
        )
        items = self._stub.ListPodSandbox(request, timeout=self.timeout).items
        return max(items, key=lambda s: s.created_at, default=None)

    def _path_from_info(self, pod_uid: str, text: str) -> str | None:
        try:
            info: dict[str, Any] = json.loads(text) if text else {}
        except ValueError:
            log.debug("pod %s: sandbox info is not JSON", pod_uid)
            info = {}
        if info.get("netNamespaceClosed"):
            raise NetnsError(f"pod {pod_uid}: its network namespace is closed")
        namespaces = ((info.get("runtimeSpec") or {}).get("linux") or {}).get("namespaces") or []
        for ns in namespaces:
            path = ns.get("path") if ns.get("type") == "network" else None
            if path and os.path.exists(path):
                return path
            if path:  # a path we cannot see (nsmgr without the host's /run): try the pid
                log.debug("pod %s: netns %s is not visible here", pod_uid, path)
        pid = info.get("pid")
        if isinstance(pid, int) and pid > 0:
            path = os.path.join(self.proc_root, str(pid), "ns", "net")
            if os.path.exists(path):
                return path
        return None

    def _cri_unusable(self, reason: str) -> None:
        if reason != self._cri_state:
            log.info("%s: finding pods' namespaces in %s", reason, self.proc_root)
            self._cri_state = reason

    # -- /proc -----------------------------------------------------------------------------
    def from_proc(self, pod_uid: str) -> str:
        """Lowest pid of the pod with a netns of its own (the sandbox's pause, usually)."""
        if not pod_uid:
            raise NetnsError("no pod UID to look for")
        under = pod_uid.replace("-", "_")
        exact = {f"pod{pod_uid}", f"pod{under}.slice"}
        suffix = f"-pod{under}.slice"
        host = _ns_id(os.path.join(self.proc_root, "1", "ns", "net"))
        try:
            entries = [e.name for e in os.scandir(self.proc_root) if e.name.isdigit()]
        except OSError as e:
            raise NetnsError(f"cannot read {self.proc_root}: {e.strerror}") from e
        for pid in sorted(entries, key=int):
            try:
                with open(os.path.join(self.proc_root, pid, "cgroup")) as f:
                    cgroups = f.read()
            except OSError:  # the process ended meanwhile, or is not ours to read
                continue
            if not _names_pod(cgroups, exact, suffix):
                continue
            path = os.path.join(self.proc_root, pid, "ns", "net")
            ns = _ns_id(path)
            if ns is not None and ns != host:
                return path
        raise NetnsError(
            f"no process of pod {pod_uid} in {self.proc_root} has a network namespace of its own"
        )


def _names_pod(cgroups: str, exact: set[str], suffix: str) -> bool:
    """Any line `id:controllers:path` whose path has a segment naming the pod."""
    for line in cgroups.splitlines():
        path = line.split(":", 2)[-1]
        for segment in path.split("/"):
            if segment in exact or segment.endswith(suffix):
                return True
    return False
