"""Addresses for connections from their service's subnet, leased in the store so they outlive a
restart and a repeated Request gets the address it had.

Which addresses are never leased:
- IPv4: the network and broadcast addresses, except in a /31 where both are hosts (RFC 3021).
- IPv6: the Subnet-Router anycast address (the all-zero interface id, RFC 4291) and, in subnets
  of /120 or larger, the 128 reserved subnet anycast addresses at the top (RFC 2526); a /127 has
  both addresses usable (RFC 6164).
- The gateways: the `Service` model has no gateway field, so the gateway is whatever its routes
  point at. Every route `next_hop` is reserved (config validation already keeps them inside the
  subnet). A service with no next hop is on-link only and nothing is reserved for a router: we do
  not guess "the first usable address", which would waste the only spare address of a /30 or /31.
  Declare the router in `routes` and it is kept free.
- DNS servers of the service that sit inside its subnet.

The first free address from the bottom is leased. A lease whose address stopped being valid (the
subnet or the routes changed) is replaced by a fresh one on the next `lease()`.
"""

from __future__ import annotations

import ipaddress

from torshim.config import IPAddress, IPNetwork, Service
from torshim.errors import AddressExhausted
from torshim.store import Lease, Store

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def bounds(subnet: IPNetwork) -> tuple[int, int] | None:
    """The first and last leasable address of `subnet` as integers (inclusive), or None."""
    lo, hi = int(subnet.network_address), int(subnet.broadcast_address)
    if subnet.version == 4:
        if subnet.prefixlen <= 30:
            lo, hi = lo + 1, hi - 1
    elif subnet.prefixlen <= 126:
        lo += 1  # Subnet-Router anycast
        if subnet.prefixlen <= 120:
            hi -= 128  # reserved subnet anycast (RFC 2526)
    return (lo, hi) if lo <= hi else None


def reserved(service: Service) -> frozenset[IPAddress]:
    """Addresses in the service's subnet that belong to routers and DNS servers."""
    hops = [r.next_hop for r in service.routes if r.next_hop is not None]
    return frozenset(a for a in (*hops, *service.dns.servers) if a in service.subnet)


def leasable(service: Service, address: str) -> bool:
    """Whether `address` may be held by a connection of `service` under the current config."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    span = bounds(service.subnet)
    return (
        addr.version == service.subnet.version
        and span is not None
        and span[0] <= int(addr) <= span[1]
        and addr not in reserved(service)
    )


class Ipam:
    """Leases addresses to connection ids; all state is in the `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def lease(self, service: Service, connection_id: str) -> IPInterface:
        """The connection's address with the subnet's prefix length, leasing one if it has none.
        Idempotent per connection id. AddressExhausted when the subnet is full."""
        lease = self.store.lease(
            service.name, connection_id, lambda held, taken: _pick(service, held, taken)
        )
        return _interface(service, lease.address)

    def release(self, service: Service | str, connection_id: str) -> bool:
        """Give the address back (Close); True if the connection held one."""
        name = service if isinstance(service, str) else service.name
        return self.store.release(name, connection_id)

    def address(self, service: Service, connection_id: str) -> IPInterface | None:
        """The connection's current address, without leasing."""
        found = self.store.leases(service.name, connection_id)
        return _interface(service, found[0].address) if found else None

    def leases(self, service: Service | str | None = None) -> list[Lease]:
        name = service if service is None or isinstance(service, str) else service.name
        return self.store.leases(name)


def _interface(service: Service, address: str) -> IPInterface:
    return ipaddress.ip_interface(f"{address}/{service.subnet.prefixlen}")


def _pick(service: Service, held: str | None, taken: frozenset[str]) -> str:
    """Keep a still-valid held address; else the lowest free one. Runs inside the store's write
    transaction, and walks at most len(taken) + len(reserved) + 1 candidates, so a /64 is cheap."""
    if held is not None and leasable(service, held):
        return held
    subnet = service.subnet
    span = bounds(subnet)
    routers = reserved(service)
    skip = {int(a) for a in routers}
    for text in taken:
        try:
            skip.add(int(ipaddress.ip_address(text)))
        except ValueError:
            continue  # a row nobody can use: it blocks nothing
    if span is not None:
        make = type(subnet.network_address)
        candidate = span[0]
        while candidate <= span[1]:
            if candidate not in skip:
                return str(make(candidate))
            candidate += 1
    raise AddressExhausted(
        f"service {service.name!r}: no free address in {subnet} "
        f"({len(taken)} leased, {len(routers)} reserved for routers and DNS)"
    )
