"""The local NSM API on a unix socket: `NetworkService` (Request, Close) and `MonitorConnection`
(an INITIAL_STATE_TRANSFER of every connection, then UPDATE and DELETE events), translated to and
from the agent's plain data.

Mechanism (cls LOCAL, type KERNEL or VFIO) parameters: `pciAddress` (the VF), `name` (the
interface in the pod, default nsm0), and the pod's namespace as `netnsURL` (a path, `file://`
path, pid or /run/netns name) or `inodeURL` (`inode://<dev>/<ino>`, looked up on the node).
Labels `podNamespace`, `podName`, `podUID` name the pod. Answers carry the same parameters plus
`pfName` and `vfIndex`; the hop's path segment carries `state` and `generation` in its metrics,
and a Close that brings a generation back is refused if the VF was attached again since.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
from google.protobuf import empty_pb2

from nsmgr.agent import Agent
from nsmgr.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    NsmgrError,
    StoppingError,
)
from nsmgr.model import AttachRequest, ConnectionInfo, PodRef, RequestError, ServiceRef
from nsmgr.netns import find_by_inode, netns_path, parse_inode_url
from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc

log = logging.getLogger("nsmgr.server")
UNIX_PATH_MAX = 107
POD_LABELS = ("podNamespace", "podName", "podUID")


# -- translation ----------------------------------------------------------------------------------
def _one_line(text: str) -> str:
    return " ".join(text.split())


def request_from_proto(req: pb.NetworkServiceRequest) -> tuple[AttachRequest, str | None]:
    """The AttachRequest and the mechanism type asked (None: whatever the VF's driver makes it)."""
    conn = req.connection
    mech = conn.mechanism if conn.HasField("mechanism") and conn.mechanism.type else None
    if mech is None and req.mechanism_preferences:
        mech = req.mechanism_preferences[0]
    params = dict(mech.parameters) if mech is not None else {}
    if not conn.network_service:
        raise RequestError("connection.network_service is empty")
    service = ServiceRef.parse(conn.network_service)
    pci = params.get("pciAddress", "")
    if not pci:
        raise RequestError("mechanism parameter pciAddress is missing")
    if params.get("netnsURL"):
        netns = netns_path(params["netnsURL"])
    elif params.get("inodeURL"):
        netns = find_by_inode(parse_inode_url(params["inodeURL"]))
    else:
        raise RequestError("mechanism parameter netnsURL or inodeURL is missing")
    labels = dict(conn.labels)
    pod = None
    if labels.get("podName") and labels.get("podNamespace"):
        pod = PodRef(labels["podNamespace"], labels["podName"], labels.get("podUID", ""))
    mtype = mech.type.upper() if mech is not None and mech.type else None
    attach = AttachRequest(
        service=service,
        pci_address=pci.lower(),
        netns=netns,
        ifname=params.get("name") or "nsm0",
        pod=pod,
        connection_id=conn.id,
        labels=labels,
    )
    return attach, mtype


def info_to_proto(info: ConnectionInfo, node: str = "") -> pb.Connection:
    params = {
        "pciAddress": info.pci_address,
        "netnsURL": f"file://{info.netns}",
        "inodeURL": info.netns_inode,
        "pfName": info.pf,
        "vfIndex": str(info.vf_index),
    }
    if info.ifname:
        params["name"] = info.ifname
    routes = []
    for r in info.routes:
        prefix, _, via = r.partition(" via ")
        routes.append(pb.Route(prefix=prefix, nextHop=via))
    ctx = pb.ConnectionContext(
        ip_context=pb.IPContext(src_ip_addrs=list(info.addresses), src_routes=routes),
        ethernet_context=pb.EthernetContext(src_mac=info.mac, vlan_tag=info.vlan),
        MTU=info.mtu,
    )
    if info.pf_status:
        ctx.extra_context["pfStatus"] = info.pf_status
    if info.dns_servers or info.dns_search:
        ctx.dns_context.configs.add(
            dns_server_ips=list(info.dns_servers), search_domains=list(info.dns_search)
        )
    labels = dict(info.labels)
    if info.pod is not None:
        labels.update(podNamespace=info.pod.namespace, podName=info.pod.name, podUID=info.pod.uid)
    hop = {"state": info.state, "generation": str(info.generation)}
    if info.error:
        hop["error"] = info.error
    return pb.Connection(
        id=info.id,
        network_service=info.service,
        mechanism=pb.Mechanism(cls="LOCAL", type=info.mechanism, parameters=params),
        context=ctx,
        labels=labels,
        path=pb.Path(
            index=0,
            path_segments=[pb.PathSegment(name=f"nsmgr-{node}", id=info.id, metrics=hop)],
        ),
        network_service_endpoint_name=info.endpoint,
        state=pb.UP if info.state == "attached" else pb.DOWN,
    )


def info_from_proto(conn: pb.Connection) -> ConnectionInfo:
    """What `nsmgr list` and `request` print, back from the wire."""
    params = dict(conn.mechanism.parameters)
    hop = dict(conn.path.path_segments[0].metrics) if conn.path.path_segments else {}
    labels = dict(conn.labels)
    pod = None
    if labels.get("podName") and labels.get("podNamespace"):
        pod = PodRef(labels["podNamespace"], labels["podName"], labels.get("podUID", ""))
    for key in POD_LABELS:
        labels.pop(key, None)
    ip = conn.context.ip_context
    dns = conn.context.dns_context.configs
    return ConnectionInfo(
        id=conn.id,
        service=conn.network_service,
        pci_address=params.get("pciAddress", ""),
        ifname=params.get("name", ""),
        netns=netns_path(params.get("netnsURL", "")) if params.get("netnsURL") else "",
        state=hop.get("state", "attached" if conn.state == pb.UP else "failed"),
        mechanism=conn.mechanism.type,
        pod=pod,
        pf=params.get("pfName", ""),
        vf_index=int(params.get("vfIndex", "-1")),
        vlan=conn.context.ethernet_context.vlan_tag,
        mtu=conn.context.MTU,
        addresses=tuple(ip.src_ip_addrs),
        generation=int(hop.get("generation", "0")),
        netns_inode=params.get("inodeURL", ""),
        mac=conn.context.ethernet_context.src_mac,
        routes=tuple(r.prefix + (f" via {r.nextHop}" if r.nextHop else "") for r in ip.src_routes),
        dns_servers=tuple(s for c in dns for s in c.dns_server_ips),
        dns_search=tuple(s for c in dns for s in c.search_domains),
        labels=labels,
        endpoint=conn.network_service_endpoint_name,
        pf_status=conn.context.extra_context.get("pfStatus", ""),
        error=hop.get("error", ""),
    )


def status_of(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, ConflictError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(e, ForbiddenError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(e, RequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(e, StoppingError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


# -- servicers ------------------------------------------------------------------------------------
class _Service(pb_grpc.NetworkServiceServicer, pb_grpc.MonitorConnectionServicer):
    def __init__(self, agent: Agent, node: str) -> None:
        self.agent = agent
        self.node = node
        self._streams: set[queue.SimpleQueue[tuple[str, ConnectionInfo] | None]] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def _run(self, context: grpc.ServicerContext, what: str, fn: Callable[[], object]) -> object:
        try:
            return fn()
        except (RequestError, NsmgrError) as e:
            code, details = status_of(e), _one_line(str(e))
        except Exception as e:  # a bug: the caller gets one line, the log the traceback
            log.exception("%s failed", what)
            code, details = grpc.StatusCode.INTERNAL, f"internal error: {_one_line(str(e))}"
        context.abort(code, details)
        raise AssertionError("unreachable")  # abort() raises

    def Request(
        self, request: pb.NetworkServiceRequest, context: grpc.ServicerContext
    ) -> pb.Connection:
        def run() -> pb.Connection:
            attach, mechanism = request_from_proto(request)
            return info_to_proto(self.agent.request(attach, mechanism), self.node)

        return self._run(context, "Request", run)  # type: ignore[return-value]

    def Close(self, request: pb.Connection, context: grpc.ServicerContext) -> empty_pb2.Empty:
        def run() -> empty_pb2.Empty:
            if not request.id:
                raise RequestError("connection.id is empty")
            generation = None
            for seg in request.path.path_segments:
                if seg.metrics.get("generation", "").isdigit():
                    generation = int(seg.metrics["generation"])
                    break
            self.agent.close(request.id, generation)
            return empty_pb2.Empty()

        return self._run(context, "Close", run)  # type: ignore[return-value]

    def MonitorConnections(
        self, request: pb.MonitorScopeSelector, context: grpc.ServicerContext
    ) -> Iterator[pb.ConnectionEvent]:
        q: queue.SimpleQueue[tuple[str, ConnectionInfo] | None] = queue.SimpleQueue()
        with self._lock:
            if self._stopping:
                return
            self._streams.add(q)
        # subscribed before the snapshot: an event racing it is sent twice, never lost
        unsubscribe = self.agent.subscribe(lambda kind, info: q.put((kind, info)))
        context.add_callback(lambda: q.put(None))  # the client went away
        try:
            yield pb.ConnectionEvent(
                type=pb.INITIAL_STATE_TRANSFER,
                connections={c.id: info_to_proto(c, self.node) for c in self.agent.connections()},
            )
            while True:
                item = q.get()
                if item is None:
                    return
                kind, info = item
                yield pb.ConnectionEvent(
                    type=pb.DELETE if kind == "DELETE" else pb.UPDATE,
                    connections={info.id: info_to_proto(info, self.node)},
                )
        finally:
            unsubscribe()
            with self._lock:
                self._streams.discard(q)

    def stop_streams(self) -> None:
        with self._lock:
            self._stopping = True
            for q in self._streams:
                q.put(None)


class NsmServer:
    """The gRPC server on the unix socket. A stale socket file is replaced; the folder is made."""

    def __init__(self, agent: Agent, path: str, workers: int = 32, node: str = "") -> None:
        self.path = path
        self._service = _Service(agent, node)
        self._workers = workers
        self._server: grpc.Server | None = None

    def start(self) -> None:
        if len(os.fsencode(self.path)) > UNIX_PATH_MAX:
            raise NsmgrError(f"{self.path}: socket path longer than {UNIX_PATH_MAX} bytes")
        folder = os.path.dirname(self.path) or "."
        try:
            os.makedirs(folder, exist_ok=True)
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise NsmgrError(f"{self.path}: {e.strerror}") from e
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise NsmgrError(f"{self.path}: exists and is not a socket")
            os.unlink(self.path)  # a previous run's
        # monitors hold a thread each for as long as they watch: room for them beside requests
        pool = futures.ThreadPoolExecutor(self._workers + 8, thread_name_prefix="nsmgr-grpc")
        server = grpc.server(pool)
        pb_grpc.add_NetworkServiceServicer_to_server(self._service, server)
        pb_grpc.add_MonitorConnectionServicer_to_server(self._service, server)
        try:
            server.add_insecure_port("unix:" + self.path)
        except RuntimeError as e:
            server.stop(0)
            raise NsmgrError(f"{self.path}: cannot listen") from e
        server.start()
        self._server = server

    def stop(self, grace: float = 2.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._service.stop_streams()
        server.stop(grace).wait(grace + 5.0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
