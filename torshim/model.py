"""Plain data between the shim's parts: a port's VLAN config, a change to it, a rendered changeset.

A PF port is a trunk carrying the VLANs of the services its VFs use (the NIC tags each VF); a
whole-port attachment is an access port. Drivers read `PortConfig`s, are given the difference as
`PortChange`s, and render it (pure) into a `Changeset` of CLI lines or an XML document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torshim import validate

Mode = Literal["trunk", "access"]


@dataclass(frozen=True)
class PortConfig:
    """The switched-VLAN config of one port. A released trunk has no VLANs; a released access port
    has access_vlan None (the switch's default VLAN)."""

    port: str
    mode: Mode | None = None  # None: the port has no switchport config we manage
    access_vlan: int | None = None
    native_vlan: int | None = None
    trunk_vlans: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        validate.interface(self.port)
        if self.mode not in (None, "trunk", "access"):
            raise validate.ValidationError(f"invalid port mode {self.mode!r}")
        for v in (self.access_vlan, self.native_vlan):
            if v is not None:
                validate.vlan(v)
        object.__setattr__(self, "trunk_vlans", validate.vlans(self.trunk_vlans))

    @classmethod
    def trunk(
        cls, port: str, vlans: set[int] | frozenset[int], native: int | None = None
    ) -> PortConfig:
        return cls(port, "trunk", None, native, frozenset(vlans))

    @classmethod
    def access(cls, port: str, vlan: int | None) -> PortConfig:
        return cls(port, "access", vlan)


@dataclass(frozen=True)
class PortChange:
    before: PortConfig
    after: PortConfig

    def __post_init__(self) -> None:
        if self.before.port != self.after.port:
            raise ValueError("a PortChange is about one port")

    @property
    def port(self) -> str:
        return self.after.port

    @property
    def added_vlans(self) -> frozenset[int]:
        return self.after.trunk_vlans - self.before.trunk_vlans

    @property
    def removed_vlans(self) -> frozenset[int]:
        return self.before.trunk_vlans - self.after.trunk_vlans

    @property
    def empty(self) -> bool:
        return self.before == self.after


@dataclass(frozen=True)
class Changeset:
    """What a driver would send: CLI lines or one XML document, for the ports in `changes`."""

    driver: str
    changes: tuple[PortChange, ...]
    lines: tuple[str, ...] = ()  # CLI drivers
    xml: str = ""  # NETCONF drivers: the <config> element, serialised by lxml

    @property
    def empty(self) -> bool:
        return not self.lines and not self.xml

    def text(self) -> str:
        """For people (`torshim render`) and logs."""
        return self.xml if self.xml else "\n".join(self.lines)


@dataclass
class ApplyResult:
    switch: str
    changes: tuple[PortChange, ...]
    committed: bool
    verified: bool
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def diff(current: dict[str, PortConfig], desired: dict[str, PortConfig]) -> tuple[PortChange, ...]:
    """The changes that take `current` to `desired`, for the ports in `desired` only."""
    out = []
    for port in sorted(desired):
        before = current.get(port, PortConfig(port))
        change = PortChange(before, desired[port])
        if not change.empty:
            out.append(change)
    return tuple(out)
