"""Discovery: read PCI network functions straight from a sysfs tree (the real /sys or a fake one).

pyudev cannot read a tree that is not /sys, and plain reads are an order of magnitude faster, so this
reads files the way the kernel lays them out. Every attribute read tolerates absence and odd values:
a driver may answer EINVAL for `speed` on a down link, `numa_node` is -1 on single-node hosts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from nicinventory.catalog import model_name
from nicinventory.errors import ScanError
from nicinventory.model import NIC, VF, Inventory, Link, Sriov, TorPort

NETWORK_CLASS_PREFIX = "0x02"  # PCI base class 02h: network controller (Ethernet, InfiniBand, ...)
_VIRTFN_RE = re.compile(r"^virtfn(\d+)$")
_BDF_IN_PATH_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")

TorLookup = Callable[[str, str | None], TorPort | None]


def read_attr(path: str) -> str | None:
    """One sysfs attribute, stripped; None when absent, unreadable (EINVAL, EOPNOTSUPP...) or empty."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace").strip()
    return text or None


def read_link_name(path: str) -> str | None:
    """The last component of a symlink's target (driver, iommu_group); None when there is none."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def _hex4(text: str | None) -> str | None:
    """`0x8086` -> `8086`; anything that is not a 16-bit hex number -> None."""
    value = _int(text)
    return f"{value:04x}" if value is not None and 0 <= value <= 0xFFFF else None


def _non_negative(text: str | None) -> int | None:
    value = _int(text)
    return value if value is not None and value >= 0 else None


def bdf_from_devpath(devpath: str) -> str | None:
    """The innermost PCI address in a kernel DEVPATH, e.g. for a net uevent; None for virtual devices."""
    found = _BDF_IN_PATH_RE.findall(devpath)
    return found[-1] if found else None


class SysfsReader:
    """Reads NICs from `<root>/bus/pci/devices`. Stateless apart from the root and the TOR lookup."""

    def __init__(self, root: str = "/sys", tor_lookup: TorLookup | None = None) -> None:
        self.root = os.path.abspath(root)
        self.devices_dir = os.path.join(self.root, "bus", "pci", "devices")
        self.tor_lookup = tor_lookup

    def check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise ScanError(f"sysfs root {self.root} does not exist")
        if not os.path.isdir(self.devices_dir):
            raise ScanError(f"{self.root} is not a sysfs tree: no bus/pci/devices")

    def scan(self) -> Inventory:
        """Every network-class PCI function that is not a VF, with its VFs."""
        self.check_root()
        try:
            names = sorted(os.listdir(self.devices_dir))
        except OSError as e:
            raise ScanError(f"cannot list {self.devices_dir}: {e.strerror}") from e
        nics = []
        for bdf in names:
            nic = self.read_nic(bdf)
            if nic is not None:
                nics.append(nic)
        return Inventory(tuple(nics))

    def _dev(self, bdf: str) -> str:
        return os.path.join(self.devices_dir, bdf)

    def is_vf(self, bdf: str) -> bool:
        return os.path.lexists(os.path.join(self._dev(bdf), "physfn"))

    def owner_of(self, bdf: str) -> str | None:
        """The NIC a PCI function belongs to: itself, or its PF for a VF; None when it is gone."""
        dev = self._dev(bdf)
        pf = read_link_name(os.path.join(dev, "physfn"))
        if pf is not None:
            return pf
        return bdf if os.path.isdir(dev) else None

    def device_of_ifname(self, ifname: str) -> str | None:
        """The PCI address behind a netdev, via `class/net/<ifname>`; None for virtual or gone ones."""
        try:
            target = os.readlink(os.path.join(self.root, "class", "net", ifname))
        except OSError:
            return None
        return bdf_from_devpath(target)

    def read_nic(self, bdf: str) -> NIC | None:
        """One NIC by PCI address; None when it is absent, not network class, or a VF."""
        dev = self._dev(bdf)
        cls = read_attr(os.path.join(dev, "class"))
        if cls is None or not cls.lower().startswith(NETWORK_CLASS_PREFIX):
            return None
        try:
            entries = set(os.listdir(dev))
        except OSError:
            return None
        if "physfn" in entries:
            return None
        vendor_id = _hex4(read_attr(os.path.join(dev, "vendor")))
        device_id = _hex4(read_attr(os.path.join(dev, "device")))
        ifname, netdir = self._netdev(dev, entries, nested=True)
        phys_port_name = read_attr(os.path.join(netdir, "phys_port_name")) if netdir else None
        nic = NIC(
            pci_address=bdf,
            ifname=ifname,
            vendor_id=vendor_id,
            device_id=device_id,
            driver=read_link_name(os.path.join(dev, "driver")),
            numa_node=_non_negative(read_attr(os.path.join(dev, "numa_node"))),
            link=self.read_link(netdir) if netdir else None,
            tor=self.tor_lookup(bdf, ifname) if self.tor_lookup else None,
            sriov=self._sriov(dev, entries),
            model=model_name(vendor_id, device_id),
            iommu_group=_int(read_link_name(os.path.join(dev, "iommu_group"))),
            rdma="infiniband" in entries,
            phys_port_name=phys_port_name,
        )
        return nic

    def _sriov(self, dev: str, entries: set[str]) -> Sriov | None:
        if "sriov_totalvfs" not in entries:
            return None
        total = _non_negative(read_attr(os.path.join(dev, "sriov_totalvfs"))) or 0
        num = _non_negative(read_attr(os.path.join(dev, "sriov_numvfs"))) or 0
        indexed = []
        for name in entries:
            m = _VIRTFN_RE.match(name)
            if m:
                indexed.append((int(m.group(1)), name))
        vfs = []
        for index, name in sorted(indexed):
            vf = self._read_vf(dev, index, name)
            if vf is not None:
                vfs.append(vf)
        return Sriov(total_vfs=total, num_vfs=num, vfs=tuple(vfs))

    def _read_vf(self, pf_dev: str, index: int, link_name: str) -> VF | None:
        vf_bdf = read_link_name(os.path.join(pf_dev, link_name))
        if vf_bdf is None:
            return None
        dev = self._dev(vf_bdf)
        try:
            entries = set(os.listdir(dev))
        except OSError:
            return None  # the virtfn link dangles: the VF is going away
        ifname, _ = self._netdev(dev, entries, nested=False)
        return VF(
            index=index,
            pci_address=vf_bdf,
            device_id=_hex4(read_attr(os.path.join(dev, "device"))),
            driver=read_link_name(os.path.join(dev, "driver")) if "driver" in entries else None,
            ifname=ifname,
            iommu_group=(
                _int(read_link_name(os.path.join(dev, "iommu_group")))
                if "iommu_group" in entries
                else None
            ),
            rdma="infiniband" in entries,
        )

    def _netdev(self, dev: str, entries: set[str], nested: bool) -> tuple[str | None, str | None]:
        """The first netdev of a PCI function and its sysfs dir.

        Most drivers put it at `<dev>/net/<ifname>`; virtio puts it one level down
        (`<dev>/virtio2/net/eth0`), which `nested` looks for on plain NICs only (VFs never do it).
        """
        candidates = [os.path.join(dev, "net")] if "net" in entries else []
        if not candidates and nested:
            candidates = [
                os.path.join(dev, e, "net") for e in sorted(entries) if e.startswith("virtio")
            ]
        for netroot in candidates:
            try:
                names = sorted(os.listdir(netroot))
            except OSError:
                continue
            for name in names:
                path = os.path.join(netroot, name)
                if os.path.isdir(path):  # a dangling entry is a netdev on its way out
                    return name, path
        return None, None

    @staticmethod
    def read_link(netdir: str) -> Link:
        carrier = _int(read_attr(os.path.join(netdir, "carrier")))
        mac = read_attr(os.path.join(netdir, "address"))
        return Link(
            state=read_attr(os.path.join(netdir, "operstate")),
            carrier=None if carrier is None else carrier == 1,
            speed_mbps=_non_negative(read_attr(os.path.join(netdir, "speed"))),
            mtu=_non_negative(read_attr(os.path.join(netdir, "mtu"))),
            mac=mac.lower() if mac else None,
        )
