"""Allocate: what one container gets for the VFs kubelet picked, in the SR-IOV network device
plugin's formats, so pods, Multus and sriov-cni keep working when users switch to us.

Verified against stored snapshots (read for issue 3; our code, not theirs):

- k8snetworkplumbingwg/sriov-network-device-plugin @40b6f507 (go.mod: network-attachment-definition-
  client v1.7.7, Mellanox/rdmamap v1.2.0, container-device-interface v0.5.4):
  * pkg/resources/pool_stub.go `GetEnvs`: `PCIDEVICE_<prefix>_<name>` = the device IDs joined by ","
    in request order; `..._INFO` = json.Marshal of {id: {provider: {key: value}}} (Go sorts map keys,
    compact). Its key is upper-cased with only "." replaced: a "-" stays (README: ". and / are
    replaced"). Issue 3 asks for "-" -> "_" too; when that changes the name we also set upstream's
    spelling, so a pod reading either keeps working.
  * pkg/infoprovider/: "generic" {"deviceID"}; "vfio" {"mount": "/dev/vfio/vfio", "dev-mount":
    "/dev/vfio/<group>"} (container path) for vfio-pci; "uio" {"mount": "/dev/uioN"} for uio and
    igb_uio; "rdma" {"uverbs", "umad", "issm", "rdma_cm": container paths, "rdma_dev": first RDMA
    device name}; "vhost" {"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"}; "extra"
    from additionalInfo: the "*" entry, then the VF's own PCI address entry overriding it, present
    (maybe as {}) whenever additionalInfo is configured. PoolSpec cannot tell an explicit empty
    additionalInfo from none, so that one case gives no "extra" here. The README's
    "vfio-dev-mount"/"extraInfo" example is stale; the code is what runs.
  * pkg/utils/utils.go `GetVFIODeviceFile`: /dev/vfio/<group>; when the group's `name` reads
    "vfio-noiommu" the host node is /dev/vfio/noiommu-<group>, the container path still /dev/vfio/<group>.
  * pkg/devices/rdma.go + rdmamap `GetRdmaCharDevices`: per RDMA device (the VF's sysfs
    `infiniband/` entries) its issm, umad and uverbs char devices, then /dev/infiniband/rdma_cm only if
    it exists on the host. (rdmamap also looks for ucm, whose kernel module went away in Linux 5.6.)
  * pkg/netdevice/netResourcePool.go `StoreDeviceInfoFile`: per device, after removing the old file,
    {"type":"pci","version":"1.1.0","pci":{"pci-address": id}} plus "rdma-device" (the RDMA device
    names joined by ",") for RDMA pools; nothing about vfio, vhost or extra goes into the file.
  * pkg/resources/server.go `Allocate` + pkg/cdi/cdi.go: with --use-cdi, no DeviceSpecs and no Mounts
    but the annotation `cdi.k8s.io/<prefix>_net-pci` = "<prefix>/net-pci=<id>,..."; the spec (one
    device per pool VF named by its PCI address, containerEdits.deviceNodes {path, hostPath,
    permissions "rw"}) is written to /var/run/cdi as `sriov-dp-<prefix>-net-pci-<name>.yaml`, kind
    "<prefix>/net-pci", cdiVersion "0.5.0" (CDI v0.5.4 CurrentVersion).
- k8snetworkplumbingwg/network-attachment-definition-client v1.7.7, pkg/utils/cniconfig.go: the file
  is /var/run/k8s.cni.cncf.io/devinfo/dp/<resource>-<device ID>-device.json with "/" -> "-" in both
  (`getDPDeviceInfoPath`), mode 0444; pkg/apis/.../types.go gives the field order type, version, pci.
- cncf-tags/container-device-interface: specs-go/version.go (0.5.0 is the least version for device
  names starting with a digit and for hostPath), pkg/cdi/qualified-device.go (vendor: letter first;
  class: letters, digits, "_", "-"), pkg/cdi/device.go (a device with empty edits makes the spec
  invalid).
- containerd's WithCDI (found by find_string) merges CDIDevices and annotations, skipping duplicates.

Where we differ from upstream, and why:
- CDI: we answer `cdi_devices` (kubelet's typed field, GA in 1.31) and the annotation with the same
  names (older kubelets pass only annotations; containerd drops the duplicate), and no device nodes.
  Each pool gets its own kind `<prefix>/net-pci-<name>` and file `sriov-dp-<prefix>-net-pci-<name>.json`:
  NSM-form pools may share a VF, and one qualified device name in two spec files is a CDI conflict
  that makes it unresolvable. VFs with no device node (plain netdev) are left out of the spec and of
  `cdi_devices`, since CDI rejects a device with empty edits (upstream's spec fails there).
- A device node missing on the host is an AllocationError naming it (upstream drops the vhost and
  rdma providers silently and the pod then lacks them); optional ones (rdma_cm) are skipped as there.
- Files are written atomically (temp file + rename) instead of remove-then-create, and a device-info
  file that already holds the very bytes and mode is left as it is (a VF handed out again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from deviceplugin.config import PoolSpec
from deviceplugin.types import AllocationError, ContainerAllocation, DeviceNode, PoolDevice

DEVICE_INFO_DIR = "/var/run/k8s.cni.cncf.io/devinfo/dp"
DEVICE_INFO_VERSION = "1.1.0"
VFIO_DRIVER = "vfio-pci"
UIO_DRIVERS = frozenset({"uio", "igb_uio"})  # what upstream gives a "uio" provider
VFIO_CONTAINER = "/dev/vfio/vfio"
RDMA_CM = "/dev/infiniband/rdma_cm"
VHOST_NET = "/dev/vhost-net"
TUN = "/dev/net/tun"
CDI_VERSION = "0.5.0"
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
CDI_FILE_PREFIX = "sriov-dp-"  # upstream's; its CleanupSpecs removes these if users switch back

_ENV_RE = re.compile(r"[./-]")
_CDI_VENDOR_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_CDI_CLASS_BAD = re.compile(r"[^A-Za-z0-9_-]")
_NUM_RE = re.compile(r"(\d+)")


def env_name(resource_name: str) -> str:
    """`example.com/100g` -> `PCIDEVICE_EXAMPLE_COM_100G` (the `_INFO` variable adds `_INFO`)."""
    return "PCIDEVICE_" + _ENV_RE.sub("_", resource_name).upper()


def upstream_env_name(resource_name: str) -> str:
    """The SR-IOV network device plugin's spelling, which keeps a `-`."""
    return "PCIDEVICE_" + resource_name.replace("/", "_").replace(".", "_").upper()


def device_info_file(resource_name: str, pci_address: str) -> str:
    """nadutils' DP file name: `example.com-100g-0000:3b:02.0-device.json`."""
    return f"{resource_name.replace('/', '-')}-{pci_address.replace('/', '-')}-device.json"


def go_json(obj: Any, sort_keys: bool) -> str:
    """JSON as Go's json.Marshal writes it (compact, HTML-escaped), so the bytes match upstream's."""
    text = json.dumps(obj, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)  # these only occur inside strings in JSON text
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def atomic_write(path: str, data: str, mode: int) -> None:
    """Write through a temp file in the same directory and rename it over `path`: a reader (Multus,
    a container runtime) sees the old file or the new one, never half of one. No fsync: these files
    live under /var/run (tmpfs) and only matter until the next boot, and Allocate is on the pod's
    critical path: hence plain fd calls, and the folder made only when missing (half the cost)."""
    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    except (FileNotFoundError, NotADirectoryError):
        os.makedirs(directory, mode=0o755, exist_ok=True)  # raises as before if it cannot be
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        try:
            view = memoryview(data.encode("utf-8"))
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def holds(path: str, data: bytes, mode: int) -> bool:
    """Whether `path` is a regular file (not a link) with permission bits `mode` and exactly `data`."""
    try:  # O_NONBLOCK: a FIFO left at the path must not hang us
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return (
            stat.S_ISREG(st.st_mode)
            and stat.S_IMODE(st.st_mode) == mode
            and st.st_size == len(data)
            and os.read(fd, len(data) + 1) == data
        )
    except OSError:
        return False
    finally:
        os.close(fd)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in _NUM_RE.split(name)]


@dataclass(frozen=True)
class DeviceEdits:
    """One VF's share of an allocation: its device nodes, its `_INFO` entry and its RDMA devices."""

    nodes: tuple[DeviceNode, ...]
    info: dict[str, dict[str, str]]
    rdma_devices: tuple[str, ...]


class Allocator:
    """Turns PoolDevices into ContainerAllocations and keeps the files consumers read beside them.

    Host paths are injected so tests run on fake trees: `sysfs_root` for RDMA and IOMMU details,
    `dev_root` to check that the device nodes kubelet will bind exist (answers always name the real
    /dev paths), `device_info_dir` (None: write none), `cdi_dir` (None: no CDI).
    """

    def __init__(
        self,
        sysfs_root: str,
        dev_root: str = "/dev",
        device_info_dir: str | None = DEVICE_INFO_DIR,
        cdi_dir: str | None = None,
    ) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.device_info_dir = device_info_dir
        self.cdi_dir = cdi_dir
        self._lock = threading.Lock()
        self._cdi: dict[str, dict[str, list[dict[str, str]]]] = {}  # spec path -> name -> nodes

    # -- one container -------------------------------------------------------------------------
    def allocate(self, spec: PoolSpec, devices: list[PoolDevice]) -> ContainerAllocation:
        """The answer for one container. Everything is checked before anything is written, so a
        refused request leaves no file behind."""
        seen: set[str] = set()
        for dev in devices:
            if dev.pci_address in seen:
                raise AllocationError(f"device {dev.pci_address} requested twice")
            seen.add(dev.pci_address)
        per_device = [(dev, self.device_edits(spec, dev)) for dev in devices]
        for dev, e in per_device:
            for node in e.nodes:
                if not self._exists(node):
                    raise AllocationError(
                        f"device {dev.pci_address}: host device node {node.host_path} is missing"
                    )
        alloc = ContainerAllocation(envs=self.envs(spec, per_device))
        try:
            if self.cdi_dir is None:
                alloc.devices = _unique(n for _, e in per_device for n in e.nodes)
            else:
                kind, names = self._cdi_update(spec, per_device)
                alloc.cdi_devices = names
                if names:
                    alloc.annotations = {cdi_annotation_key(kind): ",".join(names)}
            for dev, e in per_device:
                self.write_device_info(spec.resource_name, dev.pci_address, e.rdma_devices)
        except OSError as e:
            raise AllocationError(
                f"{spec.resource_name}: cannot write {e.filename}: {e.strerror}"
            ) from e
        return alloc

    def envs(
        self, spec: PoolSpec, per_device: list[tuple[PoolDevice, DeviceEdits]]
    ) -> dict[str, str]:
        ids = ",".join(dev.pci_address for dev, _ in per_device)
        info = go_json({dev.pci_address: e.info for dev, e in per_device}, sort_keys=True)
        out = {}
        for name in dict.fromkeys(
            (env_name(spec.resource_name), upstream_env_name(spec.resource_name))
        ):
            out[name] = ids
            out[name + "_INFO"] = info
        return out

    def device_edits(self, spec: PoolSpec, dev: PoolDevice) -> DeviceEdits:
        """Nodes and info of one VF, from the pool's options and the VF's driver; raises
        AllocationError naming the device when the host lacks what it needs."""
        nodes: list[DeviceNode] = []
        info: dict[str, dict[str, str]] = {"generic": {"deviceID": dev.pci_address}}
        rdma_devices: tuple[str, ...] = ()
        if dev.driver == VFIO_DRIVER:
            group = self._vfio_group_node(dev)
            nodes += [DeviceNode(VFIO_CONTAINER, VFIO_CONTAINER), group]
            info["vfio"] = {"mount": VFIO_CONTAINER, "dev-mount": group.container_path}
        elif dev.driver in UIO_DRIVERS:
            uio = self._uio_node(dev)
            nodes.append(uio)
            info["uio"] = {"mount": uio.container_path}
        if spec.is_rdma:
            rdma_devices, rdma_nodes = self._rdma(dev)
            nodes += rdma_nodes
            rdma_info: dict[str, str] = {}
            for n in rdma_nodes:
                for key in ("uverbs", "umad", "issm", "rdma_cm"):
                    if key in n.container_path:
                        rdma_info[key] = n.container_path
            rdma_info["rdma_dev"] = rdma_devices[0]
            info["rdma"] = rdma_info
        if spec.need_vhost_net:
            nodes += [DeviceNode(VHOST_NET, VHOST_NET), DeviceNode(TUN, TUN)]
            info["vhost"] = {"net-mount": VHOST_NET, "tun-mount": TUN}
        if spec.additional_info:
            extra: dict[str, str] = {}
            for key in ("*", dev.pci_address):
                extra.update(spec.additional_info.get(key, {}))
            info["extra"] = extra
        return DeviceEdits(tuple(nodes), info, rdma_devices)

    # -- host details ----------------------------------------------------------------------------
    def _sys_dev(self, dev: PoolDevice, *parts: str) -> str:
        return os.path.join(self.sysfs_root, "bus/pci/devices", dev.pci_address, *parts)

    def _exists(self, node: DeviceNode) -> bool:
        rel = os.path.relpath(node.host_path, "/dev")
        return os.path.exists(os.path.join(self.dev_root, rel))

    def _vfio_group_node(self, dev: PoolDevice) -> DeviceNode:
        if dev.iommu_group is None:
            raise AllocationError(
                f"device {dev.pci_address} is bound to vfio-pci but has no IOMMU group "
                "(is the IOMMU enabled: intel_iommu=on / amd_iommu=on?)"
            )
        group = str(dev.iommu_group)
        name_file = os.path.join(self.sysfs_root, "kernel/iommu_groups", group, "name")
        try:
            with open(name_file, encoding="utf-8") as f:
                noiommu = f.read().strip() == "vfio-noiommu"
        except OSError:
            noiommu = False  # bare metal has no `name`
        host = f"/dev/vfio/noiommu-{group}" if noiommu else f"/dev/vfio/{group}"
        return DeviceNode(host, f"/dev/vfio/{group}")

    def _uio_node(self, dev: PoolDevice) -> DeviceNode:
        entries = _listdir(self._sys_dev(dev, "uio"))
        if not entries:
            raise AllocationError(
                f"device {dev.pci_address} is bound to {dev.driver} but has no uio device"
            )
        path = f"/dev/{sorted(entries, key=_natural)[0]}"
        return DeviceNode(path, path)

    def _rdma(self, dev: PoolDevice) -> tuple[tuple[str, ...], list[DeviceNode]]:
        """The VF's RDMA devices and their char devices, in upstream's order (issm, umad, uverbs,
        then rdma_cm): what rdmamap finds, read from the VF's own sysfs directory."""
        names = tuple(sorted(_listdir(self._sys_dev(dev, "infiniband")), key=_natural))
        verbs = sorted(
            (e for e in _listdir(self._sys_dev(dev, "infiniband_verbs")) if e.startswith("uverbs")),
            key=_natural,
        )
        if not names or not verbs:
            raise AllocationError(
                f"device {dev.pci_address} is in RDMA pool but has no RDMA verbs device "
                "(no infiniband_verbs/ in sysfs: RDMA modules not loaded, or bound to vfio-pci?)"
            )
        mad = _listdir(self._sys_dev(dev, "infiniband_mad"))
        paths = [
            *(f"/dev/infiniband/{e}" for e in sorted(mad, key=_natural) if e.startswith("issm")),
            *(f"/dev/infiniband/{e}" for e in sorted(mad, key=_natural) if e.startswith("umad")),
            *(f"/dev/infiniband/{e}" for e in verbs),
        ]
        nodes = [DeviceNode(p, p) for p in paths]
        cm = DeviceNode(RDMA_CM, RDMA_CM)
        if self._exists(cm):  # optional, as upstream: only RDMA CM users need it
            nodes.append(cm)
        return names, nodes

    # -- device-info files -------------------------------------------------------------------------
    def device_info_path(self, resource_name: str, pci_address: str) -> str | None:
        if self.device_info_dir is None:
            return None
        return os.path.join(self.device_info_dir, device_info_file(resource_name, pci_address))

    def write_device_info(
        self, resource_name: str, pci_address: str, rdma_devices: Iterable[str] = ()
    ) -> None:
        """The network-attachment-definition device-info file Multus reads for this VF."""
        path = self.device_info_path(resource_name, pci_address)
        if path is None:
            return
        pci: dict[str, str] = {"pci-address": pci_address}
        rdma = ",".join(rdma_devices)
        if rdma:
            pci["rdma-device"] = rdma
        body = {"type": "pci", "version": DEVICE_INFO_VERSION, "pci": pci}
        text = go_json(body, sort_keys=False)
        # A VF handed out again finds its file from last time: rewriting the same bytes would change
        # nothing a reader sees, and costs Allocate three times what this check does.
        if not holds(path, text.encode("utf-8"), 0o444):
            atomic_write(path, text, 0o444)

    def release_device_info(self, resource_name: str, pci_address: str) -> None:
        """Remove a VF's device-info file (the VF left the pool); absent is fine."""
        path = self.device_info_path(resource_name, pci_address)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # -- CDI -------------------------------------------------------------------------------------
    def cdi_spec_path(self, spec: PoolSpec) -> str:
        if self.cdi_dir is None:
            raise AllocationError("CDI is not enabled (no --cdi-dir)")
        vendor, cls = cdi_kind(spec).split("/", 1)
        return os.path.join(self.cdi_dir, f"{CDI_FILE_PREFIX}{vendor}-{cls}.json")

    def write_cdi_spec(self, spec: PoolSpec, devices: list[PoolDevice]) -> str:
        """Replace the pool's CDI spec with exactly these VFs (call it when the pool changes, as
        upstream does on each ListAndWatch update). A VF whose nodes cannot be worked out now is
        left out: it fails at Allocate, with a message, rather than spoiling the others."""
        entries: dict[str, list[dict[str, str]]] = {}
        for dev in devices:
            try:
                edits = self.device_edits(spec, dev)
            except AllocationError:
                continue
            if edits.nodes:
                entries[dev.pci_address] = [_cdi_node(n) for n in _unique(edits.nodes)]
        path = self.cdi_spec_path(spec)
        with self._lock:
            self._cdi[path] = entries
            self._write_cdi(spec, path, entries)
        return path

    def remove_cdi_spec(self, spec: PoolSpec) -> None:
        """The pool is gone: its spec goes too."""
        path = self.cdi_spec_path(spec)
        with self._lock:
            self._cdi.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _cdi_update(
        self, spec: PoolSpec, per_device: list[tuple[PoolDevice, DeviceEdits]]
    ) -> tuple[str, list[str]]:
        """Make sure the pool's spec holds these VFs with their current nodes; other VFs already
        in it stay (a restarting container resolves its names again)."""
        kind = cdi_kind(spec)
        path = self.cdi_spec_path(spec)
        names = []
        with self._lock:
            entries = self._cdi.get(path)
            if entries is None:
                entries = self._cdi[path] = _read_cdi(path, kind)
            changed = not os.path.exists(path)
            for dev, e in per_device:
                if not e.nodes:
                    continue  # nothing to inject; CDI rejects a device with empty edits
                nodes = [_cdi_node(n) for n in _unique(e.nodes)]
                if entries.get(dev.pci_address) != nodes:
                    entries[dev.pci_address] = nodes
                    changed = True
                names.append(f"{kind}={dev.pci_address}")
            if changed:
                self._write_cdi(spec, path, entries)
        return kind, names

    @staticmethod
    def _write_cdi(spec: PoolSpec, path: str, entries: dict[str, list[dict[str, str]]]) -> None:
        body = {
            "cdiVersion": CDI_VERSION,
            "kind": cdi_kind(spec),
            "devices": [
                {"name": name, "containerEdits": {"deviceNodes": entries[name]}}
                for name in sorted(entries)
            ],
        }
        atomic_write(path, json.dumps(body, indent=2) + "\n", 0o644)


def cdi_kind(spec: PoolSpec) -> str:
    """`<prefix>/net-pci-<name>`: upstream's class plus the pool name, one kind per pool."""
    if not _CDI_VENDOR_RE.match(spec.prefix):
        raise AllocationError(
            f"resource prefix {spec.prefix!r} cannot be a CDI vendor (it must start with a letter)"
        )
    cls = _CDI_CLASS_BAD.sub("_", spec.name)
    if cls != spec.name:  # keep `a.b` and `a_b` apart
        cls += "-" + hashlib.sha256(spec.name.encode()).hexdigest()[:8]
    return f"{spec.prefix}/net-pci-{cls}"


def cdi_annotation_key(kind: str) -> str:
    """`cdi.k8s.io/<vendor>_<class>`; CDI allows 63 characters after the prefix."""
    name = kind.replace("/", "_")
    if len(name) > 63:
        name = name[:54] + "_" + hashlib.sha256(kind.encode()).hexdigest()[:8]
    return CDI_ANNOTATION_PREFIX + name


def _cdi_node(n: DeviceNode) -> dict[str, str]:
    return {"path": n.container_path, "hostPath": n.host_path, "permissions": n.permissions}


def _read_cdi(path: str, kind: str) -> dict[str, list[dict[str, str]]]:
    """The devices of a spec we wrote before a restart; anything unreadable counts as empty."""
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
        if body.get("kind") != kind:
            return {}
        return {d["name"]: d["containerEdits"]["deviceNodes"] for d in body.get("devices", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _unique(nodes: Iterable[DeviceNode]) -> list[DeviceNode]:
    """Once per host path, first one wins (upstream's DeviceSpecExist)."""
    out: dict[str, DeviceNode] = {}
    for n in nodes:
        out.setdefault(n.host_path, n)
    return list(out.values())


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
