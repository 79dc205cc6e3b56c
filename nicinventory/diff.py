"""What changed between two readings of a NIC, as flat records a person or a program can follow."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nicinventory.model import NIC, VF


@dataclass(frozen=True)
class Change:
    kind: str  # nic-added, nic-removed, nic-changed, vf-added, vf-removed, vf-changed
    nic: str  # the NIC's PCI address (a VF's PF for vf-*)
    pci_address: str  # the function that changed
    ifname: str | None
    vf_index: int | None = None
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # dotted name -> (old, new)
    source: str = ""  # udev, netlink, rescan, sighup, ...
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": self.kind,
            "source": self.source,
            "nic": self.nic,
            "pci_address": self.pci_address,
            "ifname": self.ifname,
            "vf_index": self.vf_index,
            "fields": {k: {"old": o, "new": n} for k, (o, n) in self.fields.items()},
        }


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    fo, fn = _flat(old), _flat(new)
    return {
        k: (fo.get(k), fn.get(k)) for k in sorted(fo.keys() | fn.keys()) if fo.get(k) != fn.get(k)
    }


def _nic_fields(nic: NIC) -> dict[str, Any]:
    """The NIC's own fields; VFs are compared one by one, not flattened into this."""
    d = dataclasses.replace(nic, sriov=None).to_dict()
    # A NIC without SR-IOV and one with it disabled differ in the sriov object itself.
    s = nic.sriov
    d["sriov"] = None if s is None else {"total_vfs": s.total_vfs, "num_vfs": s.num_vfs}
    return d


def _vf_changes(pf: str, old: tuple[VF, ...], new: tuple[VF, ...], **meta: Any) -> list[Change]:
    before = {v.pci_address: v for v in old}
    after = {v.pci_address: v for v in new}
    out = []
    for addr in sorted(before.keys() | after.keys()):
        o, n = before.get(addr), after.get(addr)
        if o == n:
            continue
        cur = n or o
        assert cur is not None
        if o is None or n is None:
            kind = "vf-added" if o is None else "vf-removed"
            out.append(Change(kind, pf, addr, cur.ifname, cur.index, **meta))
        else:
            fields = _changed(_as_dict(o), _as_dict(n))
            out.append(Change("vf-changed", pf, addr, n.ifname, n.index, fields, **meta))
    return out


def _as_dict(vf: VF) -> dict[str, Any]:
    return {k: getattr(vf, k) for k in vf.__dataclass_fields__}


def diff_nic(old: NIC | None, new: NIC | None, source: str = "", time: float = 0.0) -> list[Change]:
    """Changes from one reading of a NIC to the next; empty when nothing a reader sees changed."""
    if old == new:
        return []
    meta: dict[str, Any] = {"source": source, "time": time}
    if old is None or new is None:
        cur = new or old
        assert cur is not None
        kind = "nic-added" if old is None else "nic-removed"
        return [Change(kind, cur.pci_address, cur.pci_address, cur.ifname, **meta)]
    out = []
    fields = _changed(_nic_fields(old), _nic_fields(new))
    if fields:
        out.append(
            Change(
                "nic-changed", new.pci_address, new.pci_address, new.ifname, None, fields, **meta
            )
        )
    if old.sriov is not new.sriov:  # a link update keeps the same Sriov object: nothing to compare
        old_vfs = old.sriov.vfs if old.sriov else ()
        new_vfs = new.sriov.vfs if new.sriov else ()
        out.extend(_vf_changes(new.pci_address, old_vfs, new_vfs, **meta))
    return out
