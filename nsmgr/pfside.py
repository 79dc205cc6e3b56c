"""The PF side of a VF: settings the PF enforces for it (IFLA_VF_*: MAC, VLAN, spoofchk, trust,
rate, link state), behind one small interface so the plumbing runs the same on real NICs, on veth
stand-ins (which refuse every IFLA_VF_* with EOPNOTSUPP) and in tests.

"Unsupported" is never silent: `apply()` returns a `PfResult` that says what was applied, skipped
or refused, and `raise_for_status()` turns a refusal into PfSideError. `pf_side: none` in the
config picks `NoPfSide`, whose results say "skipped" and why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from nsmgr.errors import NetlinkError, PfSideError
from nsmgr.netlink import Rtnl, VfInfo

Change = tuple[str, Any]  # ("vlan", (100, 0, "802.1Q")), ("mac", "02:..."), ("trust", True), ...


@dataclass(frozen=True)
class VfSettings:
    """What a connection asks of its VF through the PF; None leaves a setting as it is."""

    mac: str | None = None
    vlan: int | None = None
    qos: int = 0
    vlan_proto: str = "802.1Q"
    spoofchk: bool | None = None
    trust: bool | None = None
    min_tx_rate: int | None = None
    max_tx_rate: int | None = None
    link_state: str | None = None

    def changes(self) -> list[Change]:
        """The settings to send, in the order drivers expect (MAC before VLAN, like `ip link`)."""
        out: list[Change] = []
        if self.mac is not None:
            out.append(("mac", self.mac))
        if self.vlan is not None:
            out.append(("vlan", (self.vlan, self.qos, self.vlan_proto)))
        if self.spoofchk is not None:
            out.append(("spoofchk", self.spoofchk))
        if self.trust is not None:
            out.append(("trust", self.trust))
        if self.min_tx_rate is not None or self.max_tx_rate is not None:
            out.append(("rate", (self.min_tx_rate or 0, self.max_tx_rate or 0)))
        if self.link_state is not None:
            out.append(("link_state", self.link_state))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VfSettings:
        return cls(**d)


def restore_changes(original: VfInfo, applied: list[str]) -> list[Change]:
    """The changes that put the `applied` settings back to `original`, in reverse order."""
    values: dict[str, Any] = {
        "mac": original.mac,
        "vlan": (original.vlan, original.qos, original.proto),
        "spoofchk": original.spoofchk,
        "trust": original.trust,
        "rate": (original.min_tx_rate, original.max_tx_rate),
        "link_state": original.link_state,
    }
    return [(s, values[s]) for s in reversed(applied) if values.get(s) is not None]


def pf_differences(original: VfInfo, now: VfInfo, settings: list[str]) -> list[str]:
    """The `settings` in which `now` (read back from the PF) is not `original`."""
    fields = {
        "mac": ("mac",),
        "vlan": ("vlan", "qos", "proto"),
        "spoofchk": ("spoofchk",),
        "trust": ("trust",),
        "rate": ("min_tx_rate", "max_tx_rate"),
        "link_state": ("link_state",),
    }
    out = []
    for s in settings:
        have = tuple(getattr(now, f) for f in fields[s])
        want = tuple(getattr(original, f) for f in fields[s])
        if have != want and None not in want:
            out.append(f"{s} {'/'.join(map(str, have))} (want {'/'.join(map(str, want))})")
    return out


@dataclass(frozen=True)
class PfResult:
    status: str  # applied | nothing (no change asked) | skipped (pf_side none) | refused
    applied: tuple[str, ...] = ()  # settings the PF took, in order
    reason: str = ""

    def raise_for_status(self) -> PfResult:
        if self.status == "refused":
            raise PfSideError(self.reason)
        return self


class PfSide(Protocol):
    name: str

    def read(self, pf_ifname: str | None, vf_index: int) -> VfInfo | None:
        """The VF's settings as its PF reports them; None when it reports none."""
        ...

    def apply(self, pf_ifname: str | None, vf_index: int, changes: list[Change]) -> PfResult: ...


class NetlinkPfSide:
    """IFLA_VF_* on the PF's netdev in the node namespace, one setting per message, so a refusal
    says exactly which settings went through (those are what restore puts back)."""

    name = "netlink"

    def __init__(self, rtnl: Callable[[], contextlib.AbstractContextManager[Rtnl]]) -> None:
        self._rtnl = rtnl  # lends a socket in the node namespace (node.rtnl)

    def read(self, pf_ifname: str | None, vf_index: int) -> VfInfo | None:
        if not pf_ifname:
            return None
        with self._rtnl() as rt:
            link = rt.get_link(name=pf_ifname, vfs=True)
        if link is None or link.vfs is None:
            return None
        return next((v for v in link.vfs if v.vf == vf_index), None)

    def apply(self, pf_ifname: str | None, vf_index: int, changes: list[Change]) -> PfResult:
        if not changes:
            return PfResult("nothing")
        if not pf_ifname:
            return PfResult("refused", reason=f"VF {vf_index}'s PF has no netdev to configure it")
        applied: list[str] = []
        with self._rtnl() as rt:
            pf = rt.get_link(name=pf_ifname)
            if pf is None:
                return PfResult("refused", reason=f"PF {pf_ifname} is not in the node's namespace")
            for setting, value in changes:
                try:
                    rt.set_vf(pf.index, vf_index, setting, value)
                except NetlinkError as e:
                    return PfResult("refused", tuple(applied), f"PF {pf_ifname} refused {e}")
                applied.append(setting)
        return PfResult("applied", tuple(applied))


class NoPfSide:
    """`pf_side: none`: the PF is never touched; asked settings come back as skipped."""

    name = "none"

    def read(self, pf_ifname: str | None, vf_index: int) -> VfInfo | None:
        return None

    def apply(self, pf_ifname: str | None, vf_index: int, changes: list[Change]) -> PfResult:
        if not changes:
            return PfResult("nothing")
        names = ", ".join(s for s, _ in changes)
        return PfResult("skipped", reason=f"pf_side is none: {names} not set on the PF")
