"""Addresses for connections of nsmgr's local services, one per connection, from the service's
subnet.

Leases are kept in memory and made durable by the journal: the address is part of the connection's
context, which is in its VF's record (an fsync'd file in the state dir) before the VF is touched.
On start the agent hands every recorded lease back (`restore`), so a restart keeps addresses, and a
lease can never outlive its connection's record or be lost while the record lives. A crash between
leasing and journaling loses only the lease of a connection that is rolled back anyway.

Never leased: the network and broadcast addresses of an IPv4 subnet up to /30 (a /31 has two hosts,
RFC 3021), the all-zero (Subnet-Router anycast) address of an IPv6 subnet up to /126, the route
gateways and the DNS servers inside the subnet. The lowest free address is leased.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable

from nsmgr.errors import EndpointError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class Ipam:
    def __init__(self, service: str, subnet: str, reserved: Iterable[str] = ()) -> None:
        self.service = service
        self.subnet = ipaddress.ip_network(subnet)
        lo, hi = int(self.subnet.network_address), int(self.subnet.broadcast_address)
        if self.subnet.version == 4 and self.subnet.prefixlen <= 30:
            lo, hi = lo + 1, hi - 1
        elif self.subnet.version == 6 and self.subnet.prefixlen <= 126:
            lo += 1
        self._lo, self._hi = lo, hi
        self._reserved = {int(ipaddress.ip_address(a)) for a in reserved}
        self._by_conn: dict[str, int] = {}
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def _iface(self, value: int) -> str:
        addr = (
            ipaddress.ip_address(value)
            if self.subnet.version == 4
            else ipaddress.IPv6Address(value)
        )
        return f"{addr}/{self.subnet.prefixlen}"

    def lease(self, connection_id: str) -> str:
        """`address/prefix` for the connection; the same one when asked again."""
        with self._lock:
            held = self._by_conn.get(connection_id)
            if held is not None:
                return self._iface(held)
            candidate = self._lo
            while candidate <= self._hi:
                if candidate not in self._taken and candidate not in self._reserved:
                    self._by_conn[connection_id] = candidate
                    self._taken.add(candidate)
                    return self._iface(candidate)
                candidate += 1
        raise EndpointError(
            f"service {self.service}: no free address in {self.subnet} ({len(self._taken)} leased)"
        )

    def restore(self, connection_id: str, address: str) -> bool:
        """Take back a lease the journal recorded; False when it no longer fits (subnet changed)
        or another connection holds it."""
        try:
            value = int(ipaddress.ip_interface(address).ip)
        except ValueError:
            return False
        with self._lock:
            if not (self._lo <= value <= self._hi) or value in self._reserved:
                return False
            if value in self._taken and self._by_conn.get(connection_id) != value:
                return False
            self._by_conn[connection_id] = value
            self._taken.add(value)
            return True

    def release(self, connection_id: str) -> bool:
        with self._lock:
            value = self._by_conn.pop(connection_id, None)
            if value is None:
                return False
            self._taken.discard(value)
            return True

    def leases(self) -> dict[str, str]:
        with self._lock:
            return {c: self._iface(v) for c, v in sorted(self._by_conn.items())}
