"""Which VF belongs to which pool: selectors applied to an inventory, on data alone.

`assign(specs, inventory)` is pure: the same inventory and config always give the same pools, and
for every VF left out it says why (the question users of the SR-IOV device plugin ask most).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from deviceplugin.config import PFRef, PoolSpec, Selector
from deviceplugin.types import PoolDevice
from nicinventory.model import NIC, VF, Inventory


def _refs_match(refs: Iterable[PFRef], key: str | None, vf: VF) -> bool:
    return any(r.pf == key and (r.vfs is None or vf.index in r.vfs) for r in refs)


def _listed(values: Iterable[str]) -> str:
    return "[" + ", ".join(sorted(values)) + "]"


def why_not(sel: Selector, nic: NIC, vf: VF) -> str | None:
    """None when the selector takes the VF, else the first reason it does not."""
    if sel.vendors is not None and nic.vendor_id not in sel.vendors:
        return f"vendor {nic.vendor_id} not in {_listed(sel.vendors)}"
    if sel.devices is not None and vf.device_id not in sel.devices:
        return f"device {vf.device_id} not in {_listed(sel.devices)}"
    if sel.bound_only and vf.driver is None:
        return "unbound (no driver)"
    if sel.drivers is not None and vf.driver not in sel.drivers:
        return f"driver {vf.driver or 'none (unbound)'} not in {_listed(sel.drivers)}"
    if sel.pci_addresses is not None and vf.pci_address not in sel.pci_addresses:
        return "PCI address not listed in pciAddresses"
    if sel.pf_names is not None and not _refs_match(sel.pf_names, nic.ifname, vf):
        listed = ", ".join(map(str, sel.pf_names))
        return f"PF {nic.ifname or nic.pci_address} VF {vf.index} not in pfNames [{listed}]"
    if sel.root_devices is not None and not _refs_match(sel.root_devices, nic.pci_address, vf):
        listed = ", ".join(map(str, sel.root_devices))
        return f"PF {nic.pci_address} VF {vf.index} not in rootDevices [{listed}]"
    if sel.link_types is not None and nic.link_type not in sel.link_types:
        return f"link type {nic.link_type} not in {_listed(sel.link_types)}"
    if sel.is_rdma and not vf.rdma:
        return "not RDMA capable (isRdma)"
    return None


def selects(spec: PoolSpec, nic: NIC, vf: VF) -> str | None:
    """None when any of the pool's selectors takes the VF; else the first selector's reason."""
    reasons = [why_not(s, nic, vf) for s in spec.selectors]
    if any(r is None for r in reasons):
        return None
    # Every selector said no: say what each wanted, once each.
    return " / ".join(dict.fromkeys(r for r in reasons if r)) or "no selectors"


def pool_device(nic: NIC, vf: VF) -> PoolDevice:
    return PoolDevice(
        pci_address=vf.pci_address,
        pf_pci_address=nic.pci_address,
        pf_ifname=nic.ifname,
        vf_index=vf.index,
        vendor_id=nic.vendor_id,
        device_id=vf.device_id,
        driver=vf.driver,
        ifname=vf.ifname,
        numa_node=nic.numa_node,
        iommu_group=vf.iommu_group,
        rdma=vf.rdma,
    )


@dataclass
class Assignment:
    """Pool name -> its devices (by PCI address), and why every other VF is in no pool."""

    pools: dict[str, dict[str, PoolDevice]] = field(default_factory=dict)
    unpooled: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # vf -> (pool, why)

    def pools_of(self, pci_address: str) -> list[str]:
        return [name for name, devs in self.pools.items() if pci_address in devs]


def assign(specs: list[PoolSpec], inventory: Inventory) -> Assignment:
    """resourceList pools claim VFs first, in order, exclusively; NSM-form pools then share."""
    return merge(specs, [assign_nic(specs, nic) for nic in inventory.nics])


def assign_nic(specs: list[PoolSpec], nic: NIC) -> Assignment:
    """`assign` for one NIC's VFs. NICs never affect each other's share, so a caller may keep the
    share of a NIC that did not change (state.py does, across carrier flaps)."""
    out = Assignment(pools={s.resource_name: {} for s in specs})
    for vf in nic.sriov.vfs if nic.sriov else ():
        reasons: list[tuple[str, str]] = []
        for spec in specs:  # config.py puts every resourceList pool before the NSM ones
            why = selects(spec, nic, vf)
            if why is None:
                out.pools[spec.resource_name][vf.pci_address] = pool_device(nic, vf)
                if spec.exclusive:  # a resourceList pool holds it alone, as upstream
                    break
            else:
                reasons.append((spec.resource_name, why))
        if not any(vf.pci_address in devs for devs in out.pools.values()):
            out.unpooled[vf.pci_address] = reasons
    return out


def merge(specs: list[PoolSpec], shares: Iterable[Assignment]) -> Assignment:
    """Per-NIC shares (from `assign_nic`, in inventory order) as one Assignment; copies, so the
    shares can be kept and merged again."""
    out = Assignment(pools={s.resource_name: {} for s in specs})
    for share in shares:
        for name, devs in share.pools.items():
            out.pools[name].update(devs)
        out.unpooled.update(share.unpooled)
    return out
