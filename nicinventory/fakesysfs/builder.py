"""Build fake sysfs trees with the kernel's layout and relative symlinks.

The tree is what discovery, the device plugin, the lab and the tests read instead of /sys:

    devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/      a PF (vendor, device, class, driver -> ...)
    devices/pci0000:3a/0000:3a:00.0/0000:3b:01.0/      its VF 0, a sibling as on real hardware
    bus/pci/devices/<bdf>  -> ../../../devices/...     bus/pci/drivers/<drv>/<bdf> -> ...
    kernel/iommu_groups/<n>/devices/<bdf> -> ...       class/net/<ifname> -> ../../devices/.../net/..

Mutators (link up/down, bind/unbind, VF count, removal) change the tree the way the kernel would, so
tests can drive rediscovery the same way hardware does.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from nicinventory.catalog import MODELS, NicModel

VFIO_DRIVER = "vfio-pci"


@dataclass
class VFSpec:
    binding: str = "netdev"  # "netdev" (the model's VF driver), "vfio" (vfio-pci) or "unbound"
    ifname: str | None = None  # default: <pf ifname>v<index>
    mac: str | None = None


@dataclass
class PFSpec:
    model: str  # a key of catalog.MODELS
    pci_address: str
    ifname: str | None
    numa_node: int = 0
    link_up: bool = True
    mtu: int = 1500
    mac: str | None = None
    sriov: bool = True  # False: a NIC without SR-IOV capability (no sriov_* files at all)
    vfs: list[VFSpec] = field(default_factory=list)
    phys_port_name: str | None = None  # only switchdev-capable drivers expose one
    # First VF Offset and VF Stride, in routing IDs, as in the PF's SR-IOV capability. By default
    # function f's VFs start after those of functions 0..f-1, as multi-port cards lay them out.
    vf_offset: int | None = None
    vf_stride: int = 1


@dataclass(frozen=True)
class BuiltPF:
    pci_address: str
    ifname: str | None
    vf_addresses: tuple[str, ...]


def _rid(bdf: str) -> tuple[int, int]:
    domain, bus, devfn = bdf.split(":")
    dev, fn = devfn.split(".")
    return int(domain, 16), (int(bus, 16) << 8) | (int(dev, 16) << 3) | int(fn)


def _bdf(domain: int, rid: int) -> str:
    return f"{domain:04x}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"


def vf_address(pf_bdf: str, index: int, offset: int = 16, stride: int = 1) -> str:
    """A VF's PCI address as the SR-IOV capability computes it: PF RID + offset + index * stride."""
    domain, rid = _rid(pf_bdf)
    return _bdf(domain, rid + offset + index * stride)


def _mac(seed: int) -> str:
    return "02:" + ":".join(f"{(seed >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0))


class FakeSysfs:
    """A fake /sys rooted at `root`. Creating it makes the skeleton; add_* fill it."""

    def __init__(self, root: str) -> None:
        # realpath: links are made relative to resolved targets, so the root must be resolved too,
        # or a root reached through a symlink gets links that climb out of the tree.
        self.root = os.path.realpath(root)
        for d in ("bus/pci/devices", "bus/pci/drivers", "class/net", "kernel/iommu_groups"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        self._next_group = 1 + max(
            (int(g) for g in os.listdir(self._p("kernel/iommu_groups")) if g.isdigit()), default=-1
        )
        self._next_ifindex = 100
        self._next_ib = 0

    # -- paths ----------------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def device_dir(self, bdf: str) -> str:
        return os.path.realpath(self._p("bus/pci/devices", bdf))

    @staticmethod
    def _write(path: str, value: object) -> None:
        with open(path, "w") as f:
            f.write(f"{value}\n")

    def _symlink(self, link: str, target_abs: str) -> None:
        """A relative symlink, as the kernel's are, so the tree can be moved or copied."""
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.relpath(target_abs, os.path.dirname(link)), link)

    # -- building -------------------------------------------------------------------------------
    def _parent_bridge(self, bdf: str) -> str:
        """The root port above a device: on the bus below it, as `pci0000:3a/0000:3a:00.0/0000:3b:..`."""
        domain, bus, _ = bdf.split(":")
        if int(bus, 16) == 0:  # a device on the root bus hangs off the host bridge itself
            path = self._p("devices", f"pci{domain}:00")
        else:
            up = f"{int(bus, 16) - 1:02x}"
            path = self._p("devices", f"pci{domain}:{up}", f"{domain}:{up}:00.0")
        os.makedirs(path, exist_ok=True)
        return path

    def _add_function(
        self,
        bdf: str,
        parent: str,
        vendor: str,
        device: str,
        pci_class: str,
        numa_node: int,
        driver: str | None,
    ) -> str:
        if os.path.lexists(self._p("bus/pci/devices", bdf)):
            raise ValueError(f"PCI address {bdf} is already in the tree")
        dev = os.path.join(parent, bdf)
        os.makedirs(dev)
        self._write(os.path.join(dev, "vendor"), f"0x{vendor}")
        self._write(os.path.join(dev, "device"), f"0x{device}")
        self._write(os.path.join(dev, "subsystem_vendor"), f"0x{vendor}")
        self._write(os.path.join(dev, "class"), pci_class)
        self._write(os.path.join(dev, "numa_node"), numa_node)
        group = self._next_group
        self._next_group += 1
        gdir = self._p("kernel/iommu_groups", str(group), "devices")
        os.makedirs(gdir, exist_ok=True)
        self._symlink(os.path.join(gdir, bdf), dev)
        self._symlink(os.path.join(dev, "iommu_group"), self._p("kernel/iommu_groups", str(group)))
        self._symlink(self._p("bus/pci/devices", bdf), dev)
        if driver:
            self.bind(bdf, driver)
        return dev

    def add_device(self, bdf: str, vendor: str, device: str, pci_class: str, driver: str) -> None:
        """A non-network PCI function (NVMe, GPU...), which discovery must skip."""
        self._add_function(bdf, self._parent_bridge(bdf), vendor, device, pci_class, 0, driver)

    def add_pf(self, spec: PFSpec) -> BuiltPF:
        model: NicModel = MODELS[spec.model]
        parent = self._parent_bridge(spec.pci_address)
        dev = self._add_function(
            spec.pci_address,
            parent,
            model.vendor_id,
            model.device_id,
            model.pci_class,
            spec.numa_node,
            model.driver,
        )
        if spec.ifname:
            self.add_netdev(
                spec.pci_address,
                spec.ifname,
                mac=spec.mac or _mac(_rid(spec.pci_address)[1] << 8),
                up=spec.link_up,
                speed=model.speed_mbps,
                mtu=spec.mtu,
                phys_port_name=spec.phys_port_name,
            )
        if model.rdma:
            self._add_rdma(dev)
        if not spec.sriov:
            return BuiltPF(spec.pci_address, spec.ifname, ())
        if len(spec.vfs) > model.total_vfs:
            raise ValueError(f"{model.name} supports {model.total_vfs} VFs, {len(spec.vfs)} asked")
        self._write(os.path.join(dev, "sriov_totalvfs"), model.total_vfs)
        self._write(os.path.join(dev, "sriov_numvfs"), 0)
        fn = _rid(spec.pci_address)[1] & 7
        offset = spec.vf_offset if spec.vf_offset is not None else 16 + fn * (model.total_vfs - 1)
        self._write(os.path.join(dev, "sriov_offset"), offset)
        self._write(os.path.join(dev, "sriov_stride"), spec.vf_stride)
        self._write(os.path.join(dev, "sriov_vf_device"), model.vf_device_id)
        addresses = self.set_num_vfs(spec.pci_address, spec.vfs, pf_ifname=spec.ifname)
        return BuiltPF(spec.pci_address, spec.ifname, addresses)

    def set_num_vfs(
        self, pf_bdf: str, vfs: list[VFSpec], pf_ifname: str | None = None
    ) -> tuple[str, ...]:
        """What `echo N > sriov_numvfs` does: VFs 0..N-1 appear (or all vanish for an empty list)."""
        pf_dev = self.device_dir(pf_bdf)
        vendor = _read(os.path.join(pf_dev, "vendor"))[2:]
        model = next(
            m for m in MODELS.values() if m.device_id == _read(os.path.join(pf_dev, "device"))[2:]
        )
        for name in os.listdir(pf_dev):
            if name.startswith("virtfn"):
                self.remove_device(os.path.basename(os.readlink(os.path.join(pf_dev, name))))
                os.unlink(os.path.join(pf_dev, name))
        offset = int(_read(os.path.join(pf_dev, "sriov_offset")))
        stride = int(_read(os.path.join(pf_dev, "sriov_stride")))
        numa = int(_read(os.path.join(pf_dev, "numa_node")))
        pf_net = os.path.join(pf_dev, "net")
        if pf_ifname is None and os.path.isdir(pf_net):  # a PF without netdev has no net dir
            pf_ifname = next(iter(sorted(os.listdir(pf_net))), None)
        addresses = []
        for index, vf in enumerate(vfs):
            bdf = vf_address(pf_bdf, index, offset, stride)
            driver = {"netdev": model.vf_driver, "vfio": VFIO_DRIVER, "unbound": None}[vf.binding]
            vf_dev = self._add_function(
                bdf,
                os.path.dirname(pf_dev),
                vendor,
                model.vf_device_id,
                model.pci_class,
                numa,
                driver,
            )
            self._symlink(os.path.join(vf_dev, "physfn"), pf_dev)
            self._symlink(os.path.join(pf_dev, f"virtfn{index}"), vf_dev)
            if vf.binding == "netdev":
                name = vf.ifname or (f"{pf_ifname}v{index}" if pf_ifname else f"vf{index}")
                rid = _rid(bdf)[1]
                self.add_netdev(bdf, name, mac=vf.mac or _mac(rid), up=True, speed=model.speed_mbps)
            if model.rdma and vf.binding == "netdev":
                self._add_rdma(vf_dev)
            addresses.append(bdf)
        self._write(os.path.join(pf_dev, "sriov_numvfs"), len(vfs))
        return tuple(addresses)

    def _add_rdma(self, dev: str) -> None:
        n = self._next_ib
        self._next_ib += 1
        os.makedirs(os.path.join(dev, "infiniband", f"mlx5_{n}"), exist_ok=True)
        os.makedirs(os.path.join(dev, "infiniband_verbs", f"uverbs{n}"), exist_ok=True)

    def add_netdev(
        self,
        bdf: str,
        ifname: str,
        mac: str,
        up: bool = True,
        speed: int | None = None,
        mtu: int = 1500,
        phys_port_name: str | None = None,
    ) -> str:
        dev = self.device_dir(bdf)
        net = os.path.join(dev, "net", ifname)
        os.makedirs(net)
        self._write(os.path.join(net, "address"), mac)
        self._write(os.path.join(net, "mtu"), mtu)
        self._write(os.path.join(net, "ifindex"), self._next_ifindex)
        self._next_ifindex += 1
        self._write(os.path.join(net, "type"), 1)
        if phys_port_name:
            self._write(os.path.join(net, "phys_port_name"), phys_port_name)
        self._symlink(os.path.join(net, "device"), dev)
        self._symlink(self._p("class/net", ifname), net)
        self.set_link(ifname, up, speed)
        return net

    # -- mutations the kernel would make ---------------------------------------------------------
    def set_link(self, ifname: str, up: bool, speed: int | None = None) -> None:
        """Carrier up or down. Down links report speed -1, as ice, i40e and mlx5 do."""
        net = os.path.realpath(self._p("class/net", ifname))
        self._write(os.path.join(net, "operstate"), "up" if up else "down")
        self._write(os.path.join(net, "carrier"), 1 if up else 0)
        speed_file = os.path.join(net, "speed")
        if up:
            if speed is None and os.path.exists(speed_file + ".up"):
                speed = int(_read(speed_file + ".up"))
            self._write(speed_file, speed if speed is not None else -1)
        else:
            if speed is not None:  # built down: remember the speed it comes up at
                self._write(speed_file + ".up", speed)
            elif os.path.exists(speed_file) and _read(speed_file) != "-1":
                self._write(speed_file + ".up", _read(speed_file))  # what the link comes back at
            self._write(speed_file, -1)

    def remove_netdev(self, ifname: str) -> None:
        link = self._p("class/net", ifname)
        shutil.rmtree(os.path.realpath(link))
        os.unlink(link)

    def bind(self, bdf: str, driver: str) -> None:
        ddir = self._p("bus/pci/drivers", driver)
        os.makedirs(ddir, exist_ok=True)
        dev = self.device_dir(bdf)
        self._symlink(os.path.join(dev, "driver"), ddir)
        self._symlink(os.path.join(ddir, bdf), dev)

    def unbind(self, bdf: str) -> None:
        """Driver unbind: the driver link and any netdev go away."""
        dev = self.device_dir(bdf)
        driver = os.path.basename(os.readlink(os.path.join(dev, "driver")))
        os.unlink(os.path.join(dev, "driver"))
        os.unlink(self._p("bus/pci/drivers", driver, bdf))
        netroot = os.path.join(dev, "net")
        if os.path.isdir(netroot):
            for ifname in os.listdir(netroot):
                self.remove_netdev(ifname)
            os.rmdir(netroot)

    def remove_device(self, bdf: str) -> None:
        """Hot-unplug of one PCI function (netdev, driver and IOMMU group links included)."""
        dev = self.device_dir(bdf)
        if os.path.lexists(os.path.join(dev, "driver")):
            self.unbind(bdf)
        group = os.path.basename(os.readlink(os.path.join(dev, "iommu_group")))
        shutil.rmtree(self._p("kernel/iommu_groups", group))
        shutil.rmtree(dev)
        os.unlink(self._p("bus/pci/devices", bdf))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()
