"""What a TOR port must look like, from the connections on it (pure: no store, no switch).

- VFs on a PF port: a trunk carrying the VLAN of every service some live VF on that port uses
  (the NIC tags each VF, so the port itself carries them all).
- A whole-port attachment: an access port in its service's VLAN; nothing else may share the port.
- No connection left: released. A trunk without VLANs by default; an access port in the switch's
  parking VLAN when one is configured (OpenConfig reads a trunk without trunk-vlans as "all").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torshim.errors import ConflictError, StoreError
from torshim.model import PortConfig
from torshim.store import Connection


def released(port: str, parking_vlan: int | None) -> PortConfig:
    if parking_vlan is not None:
        return PortConfig.access(port, parking_vlan)
    return PortConfig.trunk(port, frozenset())


def desired_config(
    port: str,
    connections: Iterable[Connection],
    vlans: Mapping[str, int],
    parking_vlan: int | None = None,
) -> PortConfig:
    """The port's config for these live connections; `vlans` maps service name -> VLAN.

    A service missing from `vlans` is a StoreError: guessing would drop a VLAN a live VF uses."""
    conns = list(connections)
    if not conns:
        return released(port, parking_vlan)
    missing = sorted({c.service for c in conns if c.service not in vlans})
    if missing:
        raise StoreError(
            f"{port} has live connections of services no longer configured: {', '.join(missing)}"
        )
    access = [c for c in conns if c.mode == "access"]
    if access:
        services = {c.service for c in conns}
        if len(services) > 1 or len(access) != len(conns):
            raise ConflictError(f"{port}: a whole-port attachment cannot share its port")
        return PortConfig.access(port, vlans[access[0].service])
    return PortConfig.trunk(port, frozenset(vlans[c.service] for c in conns))


def check_joinable(new: Connection, others: Iterable[Connection]) -> None:
    """ConflictError when `new` cannot join the port's other connections (before any change)."""
    for o in others:
        if o.id == new.id:
            continue
        if new.mode == "access" and o.service != new.service:
            raise ConflictError(
                f"{new.switch} {new.port} carries service {o.service!r} (connection {o.id}); "
                f"a whole-port attachment of {new.service!r} cannot share it"
            )
        if o.mode == "access" and o.service != new.service:
            raise ConflictError(
                f"{new.switch} {new.port} is attached as a whole port to service {o.service!r} "
                f"(connection {o.id})"
            )
        if o.mode != new.mode:
            raise ConflictError(
                f"{new.switch} {new.port} is used in {o.mode} mode by connection {o.id}; "
                f"{new.mode} mode cannot share it"
            )


def leftovers(actual: PortConfig | None, service_vlans: Iterable[int]) -> frozenset[int]:
    """Service VLANs a port carries although no connection of ours uses it."""
    if actual is None:
        return frozenset()
    on_port = set(actual.trunk_vlans)
    for v in (actual.access_vlan, actual.native_vlan):
        if v is not None:
            on_port.add(v)
    return frozenset(on_port & set(service_vlans))
