"""The service's side of a connection, behind one client interface.

For a hardware service the endpoint is remote (the TOR shim, found through the registry): it
programs the switch port and answers with the connection context. Until that client lands, a
service may be declared in nsmgr's own config and `LocalServices` answers for it from there
(VLAN, MTU, addresses from the subnet, routes, DNS), so the node side works and is tested alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from nsmgr.config import LocalService
from nsmgr.errors import EndpointError, ForbiddenError, NotFoundError
from nsmgr.ipam import Ipam
from nsmgr.model import PodRef, ServiceRef
from nsmgr.pfside import VfSettings


@dataclass(frozen=True)
class EndpointRequest:
    """What the endpoint is told about a connection: the service, who asks, and which VF on
    which PF of which node (the TOR shim maps node + PF to its switch port)."""

    connection_id: str
    service: ServiceRef
    node: str
    pci_address: str
    pf_pci: str
    pf_ifname: str | None
    vf_index: int
    mechanism: str  # KERNEL | VFIO
    pod: PodRef | None = None


@dataclass(frozen=True)
class Route:
    prefix: str
    via: str | None = None


@dataclass(frozen=True)
class EndpointContext:
    """The endpoint's answer (the ConnectionContext of NSM): how the VF is configured."""

    endpoint: str  # who answered ("local" for a service in nsmgr's config)
    addresses: tuple[str, ...] = ()  # address/prefix, in the pod
    routes: tuple[Route, ...] = ()
    dns_servers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    mtu: int | None = None
    vf: VfSettings = field(default_factory=VfSettings)  # PF side: VLAN, MAC, spoofchk, ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "addresses": list(self.addresses),
            "routes": [{"prefix": r.prefix, "via": r.via} for r in self.routes],
            "dns_servers": list(self.dns_servers),
            "dns_search": list(self.dns_search),
            "mtu": self.mtu,
            "vf": self.vf.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndpointContext:
        return cls(
            endpoint=d.get("endpoint", ""),
            addresses=tuple(d.get("addresses", ())),
            routes=tuple(Route(r["prefix"], r.get("via")) for r in d.get("routes", ())),
            dns_servers=tuple(d.get("dns_servers", ())),
            dns_search=tuple(d.get("dns_search", ())),
            mtu=d.get("mtu"),
            vf=VfSettings.from_dict(d.get("vf") or {}),
        )


class EndpointClient(Protocol):
    def check(self, service: ServiceRef, pod: PodRef | None) -> None:
        """Refuse, before anything changes, what the endpoint would refuse anyway (RequestError:
        unknown service, a namespace its policy does not admit). Remote clients may do nothing."""
        ...

    def request(self, req: EndpointRequest) -> EndpointContext: ...

    def close(self, req: EndpointRequest) -> None:
        """Give the connection back. Idempotent: replay may close what was never opened."""
        ...

    def restore(self, req: EndpointRequest, ctx: EndpointContext) -> None:
        """At start: a connection the journal says is live, with the context it got."""
        ...


def assigned_mac(connection_id: str) -> str:
    """A locally administered unicast MAC, stable per connection (a repeated request gets the
    same one) and unlike any vendor's burned-in address."""
    digest = hashlib.sha256(connection_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


class LocalServices:
    """Services declared in nsmgr's config."""

    name = "local"

    def __init__(self, services: list[LocalService]) -> None:
        self.services = services
        self._ipam: dict[str, Ipam] = {}
        for s in services:
            if s.subnet:
                reserved = [r.via for r in s.routes if r.via] + list(s.dns.servers)
                self._ipam[s.ref] = Ipam(s.ref, s.subnet, reserved)

    def service(self, ref: ServiceRef) -> LocalService:
        for s in self.services:
            if s.answers(ref):
                return s
        known = ", ".join(s.ref for s in self.services) or "none"
        raise NotFoundError(f"unknown network service {ref} (known here: {known})")

    def check(self, service: ServiceRef, pod: PodRef | None) -> None:
        s = self.service(service)
        if not s.allows(pod.namespace if pod else None):
            who = f"namespace {pod.namespace!r}" if pod else "a request without a pod"
            allowed = ", ".join(s.allowed_namespaces)
            raise ForbiddenError(
                f"network service {s.ref} does not admit {who} (allowed: {allowed})"
            )

    def request(self, req: EndpointRequest) -> EndpointContext:
        s = self.service(req.service)
        ipam = self._ipam.get(s.ref)
        addresses = (ipam.lease(req.connection_id),) if ipam else ()
        vf = VfSettings(
            mac=assigned_mac(req.connection_id) if s.mac == "assign" else None,
            vlan=s.vlan or None,
            qos=s.vlan_qos,
            vlan_proto=s.vlan_proto,
            spoofchk=s.vf.spoofchk,
            trust=s.vf.trust,
            min_tx_rate=s.vf.min_tx_rate,
            max_tx_rate=s.vf.max_tx_rate,
            link_state=s.vf.link_state,
        )
        return EndpointContext(
            endpoint=f"local:{s.ref}",
            addresses=addresses,
            routes=tuple(Route(r.prefix, r.via) for r in s.routes),
            dns_servers=tuple(s.dns.servers),
            dns_search=tuple(s.dns.search),
            mtu=s.mtu,
            vf=vf,
        )

    def close(self, req: EndpointRequest) -> None:
        try:
            s = self.service(req.service)
        except NotFoundError:
            return  # the service left the config: nothing of it to give back
        ipam = self._ipam.get(s.ref)
        if ipam:
            ipam.release(req.connection_id)

    def restore(self, req: EndpointRequest, ctx: EndpointContext) -> None:
        try:
            s = self.service(req.service)
        except NotFoundError:
            return
        ipam = self._ipam.get(s.ref)
        for address in ctx.addresses if ipam else ():
            if not ipam.restore(req.connection_id, address):  # type: ignore[union-attr]
                raise EndpointError(
                    f"connection {req.connection_id}: its address {address} no longer fits "
                    f"service {s.ref} (subnet {s.subnet})"
                )
