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
        return os.readlink(path).rpartition("/")[2]  # os.path.basename, without its overhead
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


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


# ARPHRD_* values of `net/<ifname>/type` that selectors name (linkTypes).
_LINK_TYPES = {1: "ether", 32: "infiniband"}


def _link_type(text: str | None) -> str | None:
    value = _int(text)
    return None if value is None else _LINK_TYPES.get(value, str(value))


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
            what = "is not a directory" if os.path.exists(self.root) else "does not exist"
            raise ScanError(f"sysfs root {self.root} {what}")
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
        # VFs whose own listing (read with their PF) showed `physfn`: read_nic would return None for
        # them, after reading their class and listing them again, which is half a big host's I/O.
        # A PF sorts before its VFs (VF RID = PF RID + offset); a VF without physfn is still read.
        vfs_seen: set[str] = set()
        for bdf in names:
            if bdf in vfs_seen:
                continue
            nic = self._read_nic(bdf, vfs_seen)
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
        return self._read_nic(bdf, None)

    # Paths below are built by concatenation, not os.path.join: it is a third of the Python time of
    # a scan, and every part is a plain name, so the result is the same path.
    def _read_nic(self, bdf: str, vfs_seen: set[str] | None) -> NIC | None:
        dev = self._dev(bdf)
        cls = read_attr(dev + "/class")
        if cls is None or not cls.lower().startswith(NETWORK_CLASS_PREFIX):
            return None
        try:
            entries = set(os.listdir(dev))
        except OSError:
            return None
        if "physfn" in entries:
            return None
        vendor_id = _hex4(read_attr(dev + "/vendor"))
        device_id = _hex4(read_attr(dev + "/device"))
        ifname, netdir = self._netdev(dev, entries, nested=True)
        phys_port_name = read_attr(netdir + "/phys_port_name") if netdir else None
        link_type = _link_type(read_attr(netdir + "/type")) if netdir else None
        nic = NIC(
            pci_address=bdf,
            ifname=ifname,
            vendor_id=vendor_id,
            device_id=device_id,
            driver=read_link_name(dev + "/driver"),
            numa_node=_non_negative(read_attr(dev + "/numa_node")),
            link=self.read_link(netdir) if netdir else None,
            tor=self.tor_lookup(bdf, ifname) if self.tor_lookup else None,
            sriov=self._sriov(dev, entries, vfs_seen),
            model=model_name(vendor_id, device_id),
            iommu_group=_int(read_link_name(dev + "/iommu_group")),
            rdma="infiniband" in entries,
            phys_port_name=phys_port_name,
            link_type=link_type,
        )
        return nic

    def _sriov(self, dev: str, entries: set[str], vfs_seen: set[str] | None) -> Sriov | None:
        if "sriov_totalvfs" not in entries:
            return None
        total = _non_negative(read_attr(dev + "/sriov_totalvfs")) or 0
        num = _non_negative(read_attr(dev + "/sriov_numvfs")) or 0
        indexed = []
        for name in entries:
            m = _VIRTFN_RE.match(name) if name.startswith("virtfn") else None
            if m:
                indexed.append((int(m.group(1)), name))
        vfs = []
        for index, name in sorted(indexed):
            vf = self._read_vf(dev, index, name, vfs_seen)
            if vf is not None:
                vfs.append(vf)
        return Sriov(total_vfs=total, num_vfs=num, vfs=tuple(vfs))

    def _read_vf(
        self, pf_dev: str, index: int, link_name: str, vfs_seen: set[str] | None
    ) -> VF | None:
        vf_bdf = read_link_name(pf_dev + "/" + link_name)
        if vf_bdf is None:
            return None
        dev = self._dev(vf_bdf)
        try:
            entries = set(os.listdir(dev))
        except OSError:
            return None  # the virtfn link dangles: the VF is going away
        if vfs_seen is not None and "physfn" in entries:
            vfs_seen.add(vf_bdf)
        ifname, _ = self._netdev(dev, entries, nested=False)
        return VF(
            index=index,
            pci_address=vf_bdf,
            device_id=_hex4(read_attr(dev + "/device")),
            driver=read_link_name(dev + "/driver") if "driver" in entries else None,
            ifname=ifname,
            iommu_group=(
                _int(read_link_name(dev + "/iommu_group")) if "iommu_group" in entries else None
            ),
            rdma="infiniband" in entries,
        )

    def _netdev(self, dev: str, entries: set[str], nested: bool) -> tuple[str | None, str | None]:
        """The first netdev of a PCI function and its sysfs dir.

        Most drivers put it at `<dev>/net/<ifname>`; virtio puts it one level down
        (`<dev>/virtio2/net/eth0`), which `nested` looks for on plain NICs only (VFs never do it).
        """
        candidates = [dev + "/net"] if "net" in entries else []
        if not candidates and nested:
            candidates = [dev + "/" + e + "/net" for e in sorted(entries) if e.startswith("virtio")]
        for netroot in candidates:
            try:
                with os.scandir(netroot) as it:
                    found = sorted(it, key=_entry_name)
            except OSError:
                continue
            for entry in found:
                # A dangling entry is a netdev on its way out. scandir knows a directory from the
                # listing itself (d_type), where os.path.isdir would stat each netdev.
                try:
                    if entry.is_dir():
                        return entry.name, entry.path
                except OSError:
                    pass  # os.path.isdir says False for what it cannot stat
        return None, None

    @staticmethod
    def read_link(netdir: str) -> Link:
        carrier = _int(read_attr(netdir + "/carrier"))
        mac = read_attr(netdir + "/address")
        return Link(
            state=read_attr(netdir + "/operstate"),
            carrier=None if carrier is None else carrier == 1,
            speed_mbps=_non_negative(read_attr(netdir + "/speed")),
            mtu=_non_negative(read_attr(netdir + "/mtu")),
            mac=mac.lower() if mac else None,
        )
