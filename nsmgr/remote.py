"""Services that live elsewhere: found through the Network Service Registry, requested from their
endpoint (for a hardware service, the TOR shim of the DC-network domain) over NSM's gRPC API.

- Find: `NetworkServiceEndpointRegistry.Find` for the service's name (`name@domain` for another
  domain: the local registry's proxy finds that domain's registry by DNS and rewrites the URLs to
  the proxy NSMgr). Expired registrations are skipped.
- Request: the endpoints are tried in turn; one that cannot be reached (UNAVAILABLE, deadline) is
  passed over for the next, which is how a dead endpoint is replaced by another that offers the
  service. A refusal (policy, unknown service, bad request) is final and becomes a RequestError,
  before anything on the node changed.
- The endpoint that answered is remembered per connection (and kept in the journal with the
  context), so Close goes back along the same path; if it is gone, every endpoint of the service is
  told (Close is idempotent on the shim).
- `refresh()` re-sends Request for every live connection (NSM's refresh): after an endpoint or
  registry restart the connection is re-established without touching the pod's interface.
- The endpoint says until when a connection lives unless refreshed (the path segment's
  `expires`). A connection that could not be refreshed before then is gone on the endpoint's side
  (the shim closed it and took the VLAN off the port): `expired()` lists it so the agent closes it
  too, and the pod integration asks for a fresh one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from nsmgr.endpoint import EndpointContext, EndpointRequest, LocalServices, Route
from nsmgr.errors import EndpointError, ForbiddenError, NotFoundError
from nsmgr.model import PodRef, RequestError, ServiceRef
from nsmgr.pfside import VfSettings
from nsmgr.registry.client import CallError, RegistryClient
from nsmgr.registry.names import grpc_target
from nsmgr.registry.pnsmgr import UNREACHABLE  # the next endpoint is tried after these
from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str

    def encode(self) -> str:
        return f"{self.name} {self.url}"  # kept in the journal's context: names have no spaces

    @classmethod
    def decode(cls, text: str) -> Endpoint | None:
        name, sep, url = text.partition(" ")
        return cls(name, url) if sep and url else None


def context_of(conn: pb.Connection, endpoint: Endpoint) -> EndpointContext:
    ctx = conn.context
    return EndpointContext(
        endpoint=endpoint.encode(),
        addresses=tuple(ctx.ip_context.src_ip_addrs),
        routes=tuple(Route(r.prefix, r.nextHop or None) for r in ctx.ip_context.src_routes),
        dns_servers=tuple(s for c in ctx.dns_context.configs for s in c.dns_server_ips),
        dns_search=tuple(d for c in ctx.dns_context.configs for d in c.search_domains),
        mtu=ctx.MTU or None,
        vf=VfSettings(vlan=ctx.ethernet_context.vlan_tag or None),
    )


TorLookup = Callable[[str, str | None], tuple[str, str] | None]  # PF pci, ifname -> switch, port


def inventory_tor_lookup(config_path: str, cache_seconds: float = 30.0) -> TorLookup:
    """The PF's TOR port from nicinventory's static map and lldpd, cached: lldpcli is a
    subprocess, too slow to run on every Request."""
    from nicinventory.config import load_config

    cfg = load_config(config_path)
    cached: list[Any] = [0.0, None]

    def lookup(pf_pci: str, pf_ifname: str | None) -> tuple[str, str] | None:
        if time.monotonic() - cached[0] > cache_seconds:
            cached[:] = [time.monotonic(), cfg.tor_map_now()]
        found = cached[1].lookup(pf_pci, pf_ifname)
        return (found.switch, found.port) if found is not None else None

    return lookup


def request_of(
    req: EndpointRequest, node: str, tor: tuple[str, str] | None = None
) -> pb.NetworkServiceRequest:
    """The mechanism describes the VF: node, PF (name and PCI address), VF index and address,
    and the PF's TOR port when the node knows it."""
    params = {
        "nodeName": node,
        "pfPciAddress": req.pf_pci,
        "pciAddress": req.pci_address,
        "vfIndex": str(req.vf_index),
    }
    if req.pf_ifname:
        params["pfInterfaceName"] = req.pf_ifname
    if tor is not None:
        params["torSwitch"], params["torPort"] = tor
    labels = {"nodeName": node}
    if req.pod is not None:
        labels.update(
            {"namespace": req.pod.namespace, "podName": req.pod.name, "podUID": req.pod.uid}
        )
    mech = pb.Mechanism(cls="LOCAL", type=req.mechanism, parameters=params)
    return pb.NetworkServiceRequest(
        connection=pb.Connection(
            id=req.connection_id, network_service=str(req.service), labels=labels, mechanism=mech
        ),
        mechanism_preferences=[mech],
    )


def _refusal(e: grpc.RpcError, service: ServiceRef, endpoint: Endpoint) -> Exception:
    text = f"{endpoint.name}: {' '.join((e.details() or '').split()) or e.code().name}"
    code = e.code()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ForbiddenError(text)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(text)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return RequestError(text)
    return EndpointError(f"service {service}: {text}")


class RegistryEndpoints:
    """EndpointClient: local services from the config first, everything else via the registry."""

    name = "registry"

    def __init__(
        self,
        local: LocalServices,
        registry_url: str,
        node: str,
        *,
        timeout: float = 10.0,
        tor_lookup: TorLookup | None = None,
    ) -> None:
        self.local = local
        self.tor_lookup = tor_lookup
        self.registry_url = registry_url
        self.node = node
        self.timeout = timeout
        self._lock = threading.Lock()
        self._registry = RegistryClient(grpc_target(registry_url), timeout=timeout)
        self._live: dict[str, tuple[EndpointRequest, Endpoint]] = {}
        self._expires: dict[str, float] = {}  # connection id -> the endpoint's deadline (wall)
        self._channels: dict[str, grpc.Channel] = {}

    # -- plumbing ---------------------------------------------------------------------------------
    def _channel(self, url: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(url)
            if ch is None:
                ch = self._channels[url] = grpc.insecure_channel(grpc_target(url))
            return ch

    def close_channels(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()
        self._registry.close()

    def _is_local(self, service: ServiceRef) -> bool:
        return any(s.answers(service) for s in self.local.services)

    def find(self, service: ServiceRef) -> list[Endpoint]:
        """The service's endpoints whose registration has not expired, in the registry's order."""
        try:
            answers = self._registry.find_endpoints(service=str(service))
        except CallError as e:
            if e.code == "INVALID_ARGUMENT":
                raise RequestError(f"registry: {e}") from None
            raise EndpointError(
                f"registry {self.registry_url}: Find {service} failed: {e.code} {e}"
            ) from None
        now = time.time()
        out = []
        for nse in answers:
            if not nse.url:
                continue
            if nse.HasField("expiration_time") and nse.expiration_time.ToNanoseconds() / 1e9 < now:
                continue
            out.append(Endpoint(nse.name, nse.url))
        return out

    def _call(
        self, req: EndpointRequest, candidates: list[Endpoint]
    ) -> tuple[pb.Connection, Endpoint]:
        if not candidates:
            raise NotFoundError(f"no endpoint offers network service {req.service}")
        tor = None
        if self.tor_lookup is not None:
            try:
                tor = self.tor_lookup(req.pf_pci, req.pf_ifname)
            except Exception as e:  # LLDP down: the shim's own port map may still know the PF
                log.warning("TOR port of %s unknown: %s", req.pf_ifname or req.pf_pci, e)
        message = request_of(req, self.node, tor)
        last: grpc.RpcError | None = None
        for ep in candidates:
            stub = pb_grpc.NetworkServiceStub(self._channel(ep.url))
            try:
                return stub.Request(message, timeout=self.timeout), ep
            except grpc.RpcError as e:
                if e.code() not in UNREACHABLE:
                    raise _refusal(e, req.service, ep) from None
                log.warning("endpoint %s (%s) unreachable: %s", ep.name, ep.url, e.code().name)
                last = e
        assert last is not None
        raise EndpointError(
            f"service {req.service}: no endpoint could be reached "
            f"({', '.join(c.name for c in candidates)}; last: {last.code().name})"
        )

    # -- EndpointClient ---------------------------------------------------------------------------
    def check(self, service: ServiceRef, pod: PodRef | None) -> None:
        if self._is_local(service):
            self.local.check(service, pod)
        # remote: the endpoint applies its own policy, and refuses before the VF is touched

    def request(self, req: EndpointRequest) -> EndpointContext:
        if self._is_local(req.service):
            return self.local.request(req)
        with self._lock:
            known = self._live.get(req.connection_id)
        # the endpoint that has the connection first: a refresh must not move it elsewhere
        candidates = self.find(req.service)
        if known is not None and known[1] in candidates:
            candidates.remove(known[1])
            candidates.insert(0, known[1])
        conn, ep = self._call(req, candidates)
        segs = conn.path.path_segments
        with self._lock:
            self._live[req.connection_id] = (req, ep)
            if segs and segs[-1].HasField("expires"):
                self._expires[req.connection_id] = segs[-1].expires.ToNanoseconds() / 1e9
            else:
                self._expires.pop(req.connection_id, None)
        return context_of(conn, ep)

    def close(self, req: EndpointRequest) -> None:
        if self._is_local(req.service):
            self.local.close(req)
            return
        with self._lock:
            known = self._live.pop(req.connection_id, None)
            self._expires.pop(req.connection_id, None)
        targets = [known[1]] if known is not None else []
        closing = pb.Connection(id=req.connection_id, network_service=str(req.service))
        for attempt in (1, 2):
            for ep in targets:
                try:
                    pb_grpc.NetworkServiceStub(self._channel(ep.url)).Close(
                        closing, timeout=self.timeout
                    )
                    return
                except grpc.RpcError as e:
                    log.warning("Close %s at %s: %s", req.connection_id, ep.name, e.code().name)
            if attempt == 1:  # not known, or gone: tell every endpoint of the service
                try:
                    targets = [t for t in self.find(req.service) if t not in targets]
                except (EndpointError, RequestError) as e:
                    raise EndpointError(f"close {req.connection_id}: {e}") from None
                if not targets:
                    return  # nobody offers the service any more: nobody holds the connection
        raise EndpointError(f"close {req.connection_id}: no endpoint of {req.service} answered")

    def restore(self, req: EndpointRequest, ctx: EndpointContext) -> None:
        if self._is_local(req.service):
            self.local.restore(req, ctx)
            return
        ep = Endpoint.decode(ctx.endpoint)
        if ep is not None:
            with self._lock:
                self._live[req.connection_id] = (req, ep)

    # -- healing ----------------------------------------------------------------------------------
    def refresh(self) -> list[str]:
        """Request every live remote connection again; returns the ids that could not be
        refreshed (they are tried again next time)."""
        with self._lock:
            live = list(self._live.values())
        failed = []
        for req, _ in live:
            try:
                self.request(req)
            except (RequestError, EndpointError) as e:
                log.warning("refresh of %s failed: %s", req.connection_id, e)
                failed.append(req.connection_id)
        return failed

    def expired(self, now: float | None = None) -> list[str]:
        """Connections whose endpoint-given deadline passed without a successful refresh."""
        now = time.time() if now is None else now
        with self._lock:
            return sorted(cid for cid, t in self._expires.items() if t <= now)
