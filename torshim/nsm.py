"""The shim as an NSM endpoint: gRPC `networkservice.NetworkService` (Request/Close) over `Shim`.

What a Request must carry (nsmgr fills it; names after networkservicemesh/api's kernel and vfio
mechanisms where they have one):

- `connection.id` (the caller's; a repeated Request with the same id refreshes the connection),
  `connection.network_service` (`name` or `name@domain`), `connection.labels["namespace"]` (the
  pod's Kubernetes namespace, checked against the service's `namespaces`).
- the mechanism (`connection.mechanism`, else the first of `mechanism_preferences`), type KERNEL or
  VFIO, with parameters `nodeName`, `pfInterfaceName` and/or `pfPciAddress`, `pciAddress` (the VF),
  optionally `torSwitch` + `torPort` (the PF's LLDP neighbour, used when the port map has no entry)
  and `portMode: access` for a whole-port attachment (then `pciAddress` may be empty).

The answer is the connection with its context: `ethernet_context.vlan_tag` (the VLAN the VF must
tag; 0 in access mode), `ip_context.src_ip_addrs` (the leased address), `src_routes`, DNS, `MTU`,
and `extra_context` torSwitch/torPort/portMode/vlan.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc
from torshim.errors import (
    AddressExhausted,
    CircuitOpen,
    CommandRejected,
    ConfigError,
    ConflictError,
    ConnectError,
    DeadlineExceeded,
    NotFoundError,
    PolicyError,
    StoreError,
    TransientError,
    UnsupportedError,
    ValidationError,
    WorkerStopped,
)
from torshim.service import Attachment, Grant, Shim

log = logging.getLogger(__name__)
T = TypeVar("T")

MECHANISMS = ("KERNEL", "VFIO")
# Margin kept from the caller's gRPC deadline so the answer still reaches it.
DEADLINE_MARGIN = 0.05

CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PolicyError, grpc.StatusCode.PERMISSION_DENIED),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnsupportedError, grpc.StatusCode.FAILED_PRECONDITION),
    (CommandRejected, grpc.StatusCode.FAILED_PRECONDITION),
    (AddressExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (CircuitOpen, grpc.StatusCode.UNAVAILABLE),
    (ConnectError, grpc.StatusCode.UNAVAILABLE),
    (TransientError, grpc.StatusCode.UNAVAILABLE),
    (WorkerStopped, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)


class BadRequest(ValidationError):
    pass


def status_of(e: BaseException) -> grpc.StatusCode:
    for cls, code in CODES:
        if isinstance(e, cls):
            return code
    return grpc.StatusCode.INTERNAL


def attachment_of(req: pb.NetworkServiceRequest) -> Attachment:
    """The shim's view of a Request; BadRequest for anything missing or malformed."""
    conn = req.connection
    mech = conn.mechanism if conn.mechanism.type else None
    if mech is None and req.mechanism_preferences:
        mech = req.mechanism_preferences[0]
    if mech is None:
        raise BadRequest("the request names no mechanism (KERNEL or VFIO with the VF's parameters)")
    if mech.type not in MECHANISMS:
        raise BadRequest(f"mechanism {mech.type!r} is not one of {', '.join(MECHANISMS)}")
    if not conn.id:
        raise BadRequest("the connection has no id")
    if not conn.network_service:
        raise BadRequest("the connection names no network service")
    p = mech.parameters
    node = p.get("nodeName") or conn.labels.get("nodeName", "")
    if not node:
        raise BadRequest("the mechanism has no nodeName parameter")
    mode = p.get("portMode", "trunk") or "trunk"
    vf = p.get("pciAddress") or None
    if mode == "trunk" and vf is None:
        raise BadRequest("a VF connection needs the VF's pciAddress (or portMode: access)")
    if not (p.get("pfInterfaceName") or p.get("pfPciAddress")):
        raise BadRequest("the mechanism has neither pfInterfaceName nor pfPciAddress")
    return Attachment(
        id=conn.id,
        service=conn.network_service,
        node=node,
        pf=p.get("pfInterfaceName", ""),
        pf_pci=p.get("pfPciAddress") or None,
        vf_pci=vf,
        mode=mode,
        namespace=conn.labels.get("namespace", ""),
        tor_switch=p.get("torSwitch") or None,
        tor_port=p.get("torPort") or None,
    )


def answer(req: pb.NetworkServiceRequest, grant: Grant, endpoint: str) -> pb.Connection:
    """The request's connection, completed with what the shim decided."""
    out = pb.Connection()
    out.CopyFrom(req.connection)
    if not out.mechanism.type:
        out.mechanism.CopyFrom(req.mechanism_preferences[0])
    svc, conn = grant.service, grant.connection
    ctx = out.context
    ctx.Clear()
    ctx.MTU = svc.mtu
    ctx.ip_context.src_ip_addrs.append(str(grant.address))
    for r in svc.routes:
        ctx.ip_context.src_routes.add(
            prefix=str(r.prefix), nextHop="" if r.next_hop is None else str(r.next_hop)
        )
    if svc.dns.servers or svc.dns.search:
        ctx.dns_context.configs.add(
            dns_server_ips=[str(s) for s in svc.dns.servers], search_domains=list(svc.dns.search)
        )
    if conn.mode == "trunk":
        ctx.ethernet_context.vlan_tag = svc.vlan
    ctx.extra_context.update(
        {
            "torSwitch": conn.switch,
            "torPort": conn.port,
            "portMode": conn.mode,
            "vlan": str(svc.vlan),
        }
    )
    out.network_service_endpoint_name = endpoint
    out.state = pb.UP
    segs = out.path.path_segments
    if not segs or segs[-1].name != endpoint:
        segs.add(name=endpoint, id=conn.id)
    if conn.expires:  # refresh before this, or the shim closes the connection
        segs[-1].expires.FromNanoseconds(int(conn.expires * 1e9))
    out.path.index = len(segs) - 1
    return out


class NetworkServiceServicer(pb_grpc.NetworkServiceServicer):
    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.endpoint = shim.config.server.name

    def _timeout(self, context: grpc.ServicerContext) -> float:
        left = context.time_remaining()
        limit = self.shim.config.server.request_timeout
        return limit if left is None else max(0.001, min(limit, left - DEADLINE_MARGIN))

    def _call(self, op: str, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
        start = time.monotonic()
        try:
            out = fn()
        except Exception as e:
            code = status_of(e)
            self.shim.metrics.requests.labels(op, code.name).inc()
            text = " ".join(str(e).split()) or type(e).__name__
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", op)
            else:
                log.warning("%s refused: %s", op, text)
            context.abort(code, text)
        self.shim.metrics.requests.labels(op, "OK").inc()
        log.info("%s done in %.1f ms", op, (time.monotonic() - start) * 1000)
        return out

    def Request(self, request: pb.NetworkServiceRequest, context: Any) -> pb.Connection:
        def run() -> pb.Connection:
            att = attachment_of(request)
            att = dataclasses.replace(att, ttl=self.shim.config.server.connection_ttl)
            grant = self.shim.request(att, timeout=self._timeout(context))
            return answer(request, grant, self.endpoint)

        return self._call("Request", context, run)

    def Close(self, request: pb.Connection, context: Any) -> empty_pb2.Empty:
        def run() -> empty_pb2.Empty:
            if not request.id:
                raise BadRequest("the connection has no id")
            self.shim.close(request.id, timeout=self._timeout(context))
            return empty_pb2.Empty()

        return self._call("Close", context, run)


def add_to_server(shim: Shim, server: grpc.Server) -> None:
    pb_grpc.add_NetworkServiceServicer_to_server(NetworkServiceServicer(shim), server)
