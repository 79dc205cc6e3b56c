"""A VF's identity and its original state: what nsmgr records before it touches anything, and
restores when the connection ends.

Where the VF is comes from sysfs (under the configured root): its PF (`physfn`), its index (the
PF's `virtfnN` link that points at it), its driver, and its netdev's name (`net/<ifname>`). The
netdev's own state (name, ifindex, altnames, MACs, MTU, admin state) comes from netlink in the
node's namespace, and the PF-side settings (IFLA_VF_*) from the PF's IFLA_VFINFO_LIST when it has
one: a veth standing in for a PF has none, which is recorded as `pf: null`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from nicinventory.model import PCI_ADDRESS_RE
from nicinventory.sysfs import read_link_name
from nsmgr.errors import NotFoundError
from nsmgr.model import RequestError
from nsmgr.netlink import LinkInfo, VfInfo

VFIO_DRIVER = "vfio-pci"


@dataclass(frozen=True)
class VfLocation:
    """A VF as sysfs shows it now."""

    pci_address: str
    pf_pci: str
    pf_ifname: str | None
    vf_index: int
    driver: str | None
    ifname: str | None  # its netdev in sysfs' namespace; None for vfio-pci or unbound


@dataclass(frozen=True)
class HostLink:
    """The VF's netdev as it was on the node."""

    ifname: str
    ifindex: int
    mac: str
    mtu: int
    up: bool
    altnames: tuple[str, ...] = ()
    kind: str | None = None

    @classmethod
    def of(cls, link: LinkInfo) -> HostLink:
        return cls(link.name, link.index, link.mac, link.mtu, link.up, link.altnames, link.kind)


@dataclass(frozen=True)
class VfOriginal:
    """Everything put back on detach. `netdev` is None for a VF without one (vfio-pci)."""

    pci_address: str
    pf_pci: str
    pf_ifname: str | None
    vf_index: int
    driver: str | None
    netdev: HostLink | None
    pf: VfInfo | None  # None: the PF reports no VF settings (or pf_side is none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VfOriginal:
        netdev = d.get("netdev")
        pf = d.get("pf")
        return cls(
            pci_address=d["pci_address"],
            pf_pci=d["pf_pci"],
            pf_ifname=d.get("pf_ifname"),
            vf_index=int(d["vf_index"]),
            driver=d.get("driver"),
            netdev=HostLink(**{**netdev, "altnames": tuple(netdev.get("altnames", ()))})
            if netdev
            else None,
            pf=VfInfo(**pf) if pf else None,
        )


def _first_entry(path: str) -> str | None:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return None
    return names[0] if names else None


def locate_vf(sysfs_root: str, pci_address: str) -> VfLocation:
    """Where VF `pci_address` is: its PF, index, driver and netdev name. NotFoundError when the
    node has no such PCI function, RequestError when it is not a VF."""
    if not PCI_ADDRESS_RE.match(pci_address):
        raise RequestError(f"device {pci_address!r} is not a PCI address like 0000:3b:01.2")
    dev = os.path.join(sysfs_root, "bus", "pci", "devices", pci_address)
    if not os.path.isdir(dev):
        raise NotFoundError(f"no PCI device {pci_address} on this node")
    pf_pci = read_link_name(os.path.join(dev, "physfn"))
    if pf_pci is None:
        raise RequestError(f"device {pci_address} is not an SR-IOV VF (it has no physfn)")
    pf_dev = os.path.join(sysfs_root, "bus", "pci", "devices", pf_pci)
    index = -1
    try:
        entries = os.listdir(pf_dev)
    except OSError:
        entries = []
    for name in entries:
        if name.startswith("virtfn") and read_link_name(os.path.join(pf_dev, name)) == pci_address:
            index = int(name[len("virtfn") :])
            break
    if index < 0:
        raise NotFoundError(f"VF {pci_address} is not listed by its PF {pf_pci} (going away?)")
    return VfLocation(
        pci_address=pci_address,
        pf_pci=pf_pci,
        pf_ifname=_first_entry(os.path.join(pf_dev, "net")),
        vf_index=index,
        driver=read_link_name(os.path.join(dev, "driver")),
        ifname=_first_entry(os.path.join(dev, "net")),
    )


def pci_device_exists(sysfs_root: str, pci_address: str) -> bool:
    return os.path.isdir(os.path.join(sysfs_root, "bus", "pci", "devices", pci_address))


def is_the_vf(
    link: LinkInfo, pci_address: str, macs: set[str], kind: str | None, index: int | None = None
) -> bool:
    """Whether `link` is the VF's netdev. A real VF names its PCI parent (IFLA_PARENT_DEV_NAME,
    kernel 5.15+), which decides. Without one (a veth stand-in, an old kernel) the link must be of
    the same kind and have one of the MACs the VF had (its original or the one nsmgr gave it), or,
    inside the pod's namespace (held open by nsmgr, so its ifindexes are not reused under it), the
    ifindex it had there: a pod may change the MAC. A name alone is never proof."""
    if link.parent_dev:
        return link.parent_dev == pci_address
    if link.kind != kind:
        return False
    return link.mac in macs or (index is not None and link.index == index)
