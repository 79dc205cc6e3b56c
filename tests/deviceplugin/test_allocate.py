"""Allocate on fake hosts: env names and `_INFO` JSON, device nodes, device-info files and CDI specs
in the SR-IOV network device plugin's formats (see deviceplugin/allocate.py for where they come from).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import pytest

from deviceplugin.allocate import Allocator, cdi_annotation_key, cdi_kind, env_name
from deviceplugin.config import PoolSpec, Selector
from deviceplugin.pools import pool_device
from deviceplugin.types import AllocationError, DeviceNode, PoolDevice
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec
from nicinventory.sysfs import SysfsReader

# The fake host: IOMMU groups and RDMA device numbers follow build order.
NET0, NET1 = "0000:3b:02.0", "0000:3b:02.1"  # e810 VFs on iavf, groups 1 and 2
VFIO0, VFIO1 = "0000:5e:02.0", "0000:5e:02.1"  # e810 VFs on vfio-pci, groups 4 and 5
RDMA0, RDMA1 = "0000:86:02.0", "0000:86:02.1"  # cx6dx VFs: mlx5_1/uverbs1, mlx5_2/uverbs2
DEV_FILES = (
    "vfio/vfio",
    "vfio/4",
    "vfio/5",
    "infiniband/uverbs1",
    "infiniband/uverbs2",
    "infiniband/rdma_cm",
    "vhost-net",
    "net/tun",
)


@dataclass
class Host:
    root: str
    fs: FakeSysfs
    dev_root: str
    info_dir: str
    devices: dict[str, PoolDevice]

    def rescan(self) -> None:
        self.devices = _scan(self.fs.root)

    def allocator(self, cdi: bool = False) -> Allocator:
        cdi_dir = os.path.join(self.root, "cdi") if cdi else None
        return Allocator(self.fs.root, self.dev_root, self.info_dir, cdi_dir)


def _scan(sysfs_root: str) -> dict[str, PoolDevice]:
    inv = SysfsReader(sysfs_root).scan()
    return {
        vf.pci_address: pool_device(nic, vf)
        for nic in inv.nics
        for vf in (nic.sriov.vfs if nic.sriov else ())
    }


@pytest.fixture
def host(tmp_path) -> Host:
    fs = FakeSysfs(str(tmp_path / "sys"))
    fs.add_pf(PFSpec("e810", "0000:3b:00.0", "ens1f0", vfs=[VFSpec(), VFSpec()]))
    fs.add_pf(PFSpec("e810", "0000:5e:00.0", "ens2f0", vfs=[VFSpec("vfio"), VFSpec("vfio")]))
    fs.add_pf(PFSpec("cx6dx", "0000:86:00.0", "ens3f0np0", numa_node=1, vfs=[VFSpec(), VFSpec()]))
    dev_root = tmp_path / "dev"
    for rel in DEV_FILES:  # plain files stand in for the char devices
        (dev_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (dev_root / rel).write_text("")
    return Host(str(tmp_path), fs, str(dev_root), str(tmp_path / "devinfo"), _scan(fs.root))


def pool(name: str = "100g", prefix: str = "example.com", **kw: Any) -> PoolSpec:
    return PoolSpec(prefix=prefix, name=name, selectors=(Selector(),), **kw)


def nodes(*paths: str | tuple[str, str]) -> list[DeviceNode]:
    return [DeviceNode(*p) if isinstance(p, tuple) else DeviceNode(p, p) for p in paths]


def files(directory: str) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


# -- env names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "want"),
    [
        ("example.com/100g", "PCIDEVICE_EXAMPLE_COM_100G"),
        ("intel.com/sriov_netdevice", "PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE"),
        ("openshift.io/mlx-rdma", "PCIDEVICE_OPENSHIFT_IO_MLX_RDMA"),
        ("nvidia.com/Dpdk.Nic-1", "PCIDEVICE_NVIDIA_COM_DPDK_NIC_1"),
        ("my-corp.example.org/25g", "PCIDEVICE_MY_CORP_EXAMPLE_ORG_25G"),
    ],
)
def test_env_name(resource: str, want: str) -> None:
    assert env_name(resource) == want


# -- golden allocations ---------------------------------------------------------------------------

GENERIC = {"generic": {"deviceID": NET0}}
VHOST = {"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"}

CASES: list[tuple[str, dict[str, Any], list[str], dict[str, Any], list[DeviceNode]]] = [
    (
        "netdev, request order kept",
        {},
        [NET1, NET0],
        {NET1: {"generic": {"deviceID": NET1}}, NET0: GENERIC},
        [],
    ),
    (
        "vfio: /dev/vfio/vfio once, one node per group",
        {},
        [VFIO0, VFIO1],
        {
            VFIO0: {
                "generic": {"deviceID": VFIO0},
                "vfio": {"mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/4"},
            },
            VFIO1: {
                "generic": {"deviceID": VFIO1},
                "vfio": {"mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/5"},
            },
        },
        nodes("/dev/vfio/vfio", "/dev/vfio/4", "/dev/vfio/5"),
    ),
    (
        "rdma: uverbs of the VF, then rdma_cm",
        {"is_rdma": True},
        [RDMA0, RDMA1],
        {
            RDMA0: {
                "generic": {"deviceID": RDMA0},
                "rdma": {
                    "rdma_cm": "/dev/infiniband/rdma_cm",
                    "rdma_dev": "mlx5_1",
                    "uverbs": "/dev/infiniband/uverbs1",
                },
            },
            RDMA1: {
                "generic": {"deviceID": RDMA1},
                "rdma": {
                    "rdma_cm": "/dev/infiniband/rdma_cm",
                    "rdma_dev": "mlx5_2",
                    "uverbs": "/dev/infiniband/uverbs2",
                },
            },
        },
        nodes("/dev/infiniband/uverbs1", "/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs2"),
    ),
    (
        "vhost-net and tun",
        {"need_vhost_net": True},
        [NET0],
        {NET0: {**GENERIC, "vhost": VHOST}},
        nodes("/dev/vhost-net", "/dev/net/tun"),
    ),
    (
        "vfio with vhost-net",
        {"need_vhost_net": True},
        [VFIO1],
        {
            VFIO1: {
                "generic": {"deviceID": VFIO1},
                "vfio": {"mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/5"},
                "vhost": VHOST,
            }
        },
        nodes("/dev/vfio/vfio", "/dev/vfio/5", "/dev/vhost-net", "/dev/net/tun"),
    ),
    (
        "additionalInfo: '*' for all, the VF's own address overrides",
        {"additional_info": {"*": {"a": "1", "b": "2"}, NET0: {"b": "3", "c": "4"}}},
        [NET0, NET1],
        {
            NET0: {**GENERIC, "extra": {"a": "1", "b": "3", "c": "4"}},
            NET1: {"generic": {"deviceID": NET1}, "extra": {"a": "1", "b": "2"}},
        },
        [],
    ),
    (
        "additionalInfo matching nothing still gives an empty extra",
        {"additional_info": {"0000:ff:00.0": {"a": "1"}}},
        [NET0],
        {NET0: {**GENERIC, "extra": {}}},
        [],
    ),
]


@pytest.mark.parametrize(
    ("case", "opts", "ids", "info", "want_nodes"), CASES, ids=[c[0] for c in CASES]
)
def test_allocate_golden(
    host: Host,
    case: str,
    opts: dict[str, Any],
    ids: list[str],
    info: dict[str, Any],
    want_nodes: list[DeviceNode],
) -> None:
    alloc = host.allocator().allocate(pool(**opts), [host.devices[i] for i in ids])
    assert set(alloc.envs) == {"PCIDEVICE_EXAMPLE_COM_100G", "PCIDEVICE_EXAMPLE_COM_100G_INFO"}
    assert alloc.envs["PCIDEVICE_EXAMPLE_COM_100G"] == ",".join(ids)
    assert json.loads(alloc.envs["PCIDEVICE_EXAMPLE_COM_100G_INFO"]) == info
    assert alloc.devices == want_nodes
    assert all(n.permissions == "rw" for n in alloc.devices)
    assert (alloc.mounts, alloc.cdi_devices, alloc.annotations) == ([], [], {})


def test_info_json_bytes_as_go_writes_them(host: Host) -> None:
    """Sorted keys, no spaces, HTML characters escaped: byte-equal to upstream's json.Marshal."""
    spec = pool(additional_info={"*": {"url": "http://x/?a=1&b=<2>"}})
    alloc = host.allocator().allocate(spec, [host.devices[VFIO0]])
    assert alloc.envs["PCIDEVICE_EXAMPLE_COM_100G_INFO"] == (
        '{"0000:5e:02.0":{"extra":{"url":"http://x/?a=1\\u0026b=\\u003c2\\u003e"},'
        '"generic":{"deviceID":"0000:5e:02.0"},'
        '"vfio":{"dev-mount":"/dev/vfio/4","mount":"/dev/vfio/vfio"}}}'
    )


def test_hyphenated_resource_also_gets_upstream_spelling(host: Host) -> None:
    """Upstream keeps a `-` in the variable name; pods written for it must keep finding it."""
    alloc = host.allocator().allocate(pool(name="sriov-net"), [host.devices[NET0]])
    assert sorted(alloc.envs) == [
        "PCIDEVICE_EXAMPLE_COM_SRIOV-NET",
        "PCIDEVICE_EXAMPLE_COM_SRIOV-NET_INFO",
        "PCIDEVICE_EXAMPLE_COM_SRIOV_NET",
        "PCIDEVICE_EXAMPLE_COM_SRIOV_NET_INFO",
    ]
    assert alloc.envs["PCIDEVICE_EXAMPLE_COM_SRIOV-NET"] == NET0


def test_rdma_cm_is_optional_as_upstream(host: Host) -> None:
    os.unlink(os.path.join(host.dev_root, "infiniband/rdma_cm"))
    alloc = host.allocator().allocate(pool(is_rdma=True), [host.devices[RDMA0]])
    assert alloc.devices == nodes("/dev/infiniband/uverbs1")
    info = json.loads(alloc.envs["PCIDEVICE_EXAMPLE_COM_100G_INFO"])
    assert info[RDMA0]["rdma"] == {"rdma_dev": "mlx5_1", "uverbs": "/dev/infiniband/uverbs1"}


def test_rdma_mad_devices_when_the_kernel_has_them(host: Host) -> None:
    """InfiniBand ports also have umad/issm char devices (infiniband_mad/ in sysfs)."""
    mad = os.path.join(host.fs.device_dir(RDMA0), "infiniband_mad")
    for name in ("umad1", "issm1"):
        os.makedirs(os.path.join(mad, name))
        open(os.path.join(host.dev_root, "infiniband", name), "w").close()
    alloc = host.allocator().allocate(pool(is_rdma=True), [host.devices[RDMA0]])
    assert alloc.devices == nodes(
        "/dev/infiniband/issm1",
        "/dev/infiniband/umad1",
        "/dev/infiniband/uverbs1",
        "/dev/infiniband/rdma_cm",
    )
    rdma = json.loads(alloc.envs["PCIDEVICE_EXAMPLE_COM_100G_INFO"])[RDMA0]["rdma"]
    assert rdma["issm"] == "/dev/infiniband/issm1"
    assert rdma["umad"] == "/dev/infiniband/umad1"


def test_vfio_noiommu_host_node(host: Host) -> None:
    """In a VM without vIOMMU the group is named vfio-noiommu and /dev has noiommu-<N>."""
    with open(os.path.join(host.fs.root, "kernel/iommu_groups/4/name"), "w") as f:
        f.write("vfio-noiommu\n")
    open(os.path.join(host.dev_root, "vfio/noiommu-4"), "w").close()
    alloc = host.allocator().allocate(pool(), [host.devices[VFIO0]])
    assert alloc.devices == nodes("/dev/vfio/vfio", ("/dev/vfio/noiommu-4", "/dev/vfio/4"))
    info = json.loads(alloc.envs["PCIDEVICE_EXAMPLE_COM_100G_INFO"])
    assert info[VFIO0]["vfio"]["dev-mount"] == "/dev/vfio/4"


def test_uio_bound_vf(host: Host) -> None:
    host.fs.unbind(NET0)
    host.fs.bind(NET0, "igb_uio")
    os.makedirs(os.path.join(host.fs.device_dir(NET0), "uio", "uio3"))
    open(os.path.join(host.dev_root, "uio3"), "w").close()
    host.rescan()
    alloc = host.allocator().allocate(pool(), [host.devices[NET0]])
    assert alloc.devices == nodes("/dev/uio3")
    info = json.loads(alloc.envs["PCIDEVICE_EXAMPLE_COM_100G_INFO"])
    assert info[NET0] == {**GENERIC, "uio": {"mount": "/dev/uio3"}}


# -- device-info files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "dev_id", "pci"),
    [
        ({}, NET0, {"pci-address": NET0}),
        ({"need_vhost_net": True}, NET0, {"pci-address": NET0}),
        ({}, VFIO1, {"pci-address": VFIO1}),
        ({"is_rdma": True}, RDMA1, {"pci-address": RDMA1, "rdma-device": "mlx5_2"}),
    ],
)
def test_device_info_file(
    host: Host, opts: dict[str, Any], dev_id: str, pci: dict[str, str]
) -> None:
    host.allocator().allocate(pool(**opts), [host.devices[dev_id]])
    name = f"example.com-100g-{dev_id}-device.json"
    assert files(host.info_dir) == [name]
    path = os.path.join(host.info_dir, name)
    with open(path) as f:
        text = f.read()
    assert json.loads(text) == {"type": "pci", "version": "1.1.0", "pci": pci}
    assert text.startswith('{"type":"pci","version":"1.1.0","pci":{"pci-address":')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_device_info_one_file_per_vf_rewritten_atomically(host: Host) -> None:
    os.makedirs(host.info_dir)
    other = os.path.join(host.info_dir, "intel.com-other-0000:3b:02.0-device.json")
    open(other, "w").close()  # another pool's file for the same VF stays
    stale = os.path.join(host.info_dir, f"example.com-100g-{NET1}-device.json")
    with open(stale, "w") as f:
        f.write("stale")
    os.chmod(stale, 0o444)
    alloc = host.allocator()
    alloc.allocate(pool(), [host.devices[NET0], host.devices[NET1]])
    alloc.allocate(pool(), [host.devices[NET1]])
    assert files(host.info_dir) == [
        "example.com-100g-0000:3b:02.0-device.json",
        "example.com-100g-0000:3b:02.1-device.json",
        "intel.com-other-0000:3b:02.0-device.json",
    ]  # no temp file left
    with open(stale) as f:
        assert json.load(f)["pci"] == {"pci-address": NET1}


def test_release_device_info(host: Host) -> None:
    alloc = host.allocator()
    alloc.allocate(pool(), [host.devices[NET0], host.devices[NET1]])
    alloc.release_device_info("example.com/100g", NET0)
    alloc.release_device_info("example.com/100g", NET0)  # already gone: fine
    alloc.release_device_info("example.com/other", NET1)  # not ours: nothing happens
    assert files(host.info_dir) == [f"example.com-100g-{NET1}-device.json"]


def test_no_device_info_dir_writes_nothing(host: Host) -> None:
    alloc = Allocator(host.fs.root, host.dev_root, None)
    alloc.allocate(pool(), [host.devices[NET0]])
    alloc.release_device_info("example.com/100g", NET0)
    assert alloc.device_info_path("example.com/100g", NET0) is None
    assert not os.path.exists(host.info_dir)


# -- refusals -------------------------------------------------------------------------------------


def _no_group(host: Host) -> list[PoolDevice]:
    return [dataclasses.replace(host.devices[VFIO0], iommu_group=None)]


ERRORS: list[tuple[str, dict[str, Any], Any, str]] = [
    (
        "vfio without IOMMU group",
        {},
        _no_group,
        f"device {VFIO0} is bound to vfio-pci but has no IOMMU",
    ),
    ("rdma pool, VF without verbs", {"is_rdma": True}, [NET0], f"device {NET0} is in RDMA pool"),
    ("rdma pool, vfio VF", {"is_rdma": True}, [VFIO0], f"device {VFIO0} is in RDMA pool"),
    ("same device twice", {}, [NET0, NET0], f"device {NET0} requested twice"),
    ("missing /dev/vfio/vfio", {}, [VFIO0], "host device node /dev/vfio/vfio is missing"),
    ("missing group node", {}, [VFIO1], "host device node /dev/vfio/5 is missing"),
    (
        "missing uverbs",
        {"is_rdma": True},
        [RDMA0],
        "host device node /dev/infiniband/uverbs1 is missing",
    ),
    (
        "missing vhost-net",
        {"need_vhost_net": True},
        [NET0],
        "host device node /dev/vhost-net is missing",
    ),
    ("missing tun", {"need_vhost_net": True}, [NET1], "host device node /dev/net/tun is missing"),
]
REMOVE = {
    "missing /dev/vfio/vfio": "vfio/vfio",
    "missing group node": "vfio/5",
    "missing uverbs": "infiniband/uverbs1",
    "missing vhost-net": "vhost-net",
    "missing tun": "net/tun",
}


@pytest.mark.parametrize("cdi", [False, True], ids=["nodes", "cdi"])
@pytest.mark.parametrize(("case", "opts", "ids", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_allocation_errors_name_the_culprit_and_write_nothing(
    host: Host, case: str, opts: dict[str, Any], ids: Any, message: str, cdi: bool
) -> None:
    if case in REMOVE:
        os.unlink(os.path.join(host.dev_root, REMOVE[case]))
    devices = ids(host) if callable(ids) else [host.devices[i] for i in ids]
    with pytest.raises(AllocationError, match=re.escape(message)):
        host.allocator(cdi=cdi).allocate(pool(**opts), devices)
    assert files(host.info_dir) == []
    assert files(os.path.join(host.root, "cdi")) == []


def test_vfio_without_iommu_group_from_sysfs(host: Host) -> None:
    """The scan itself gives no group when the kernel has no iommu_group link."""
    os.unlink(os.path.join(host.fs.device_dir(VFIO1), "iommu_group"))
    host.rescan()
    assert host.devices[VFIO1].iommu_group is None
    with pytest.raises(AllocationError, match=f"device {VFIO1} is bound to vfio-pci"):
        host.allocator().allocate(pool(), [host.devices[VFIO1]])


# -- CDI ------------------------------------------------------------------------------------------


def _cdi_spec(host: Host, name: str = "sriov-dp-example.com-net-pci-100g.json") -> dict[str, Any]:
    with open(os.path.join(host.root, "cdi", name)) as f:
        return json.load(f)


def _vfio_edits(group: int) -> dict[str, Any]:
    return {
        "deviceNodes": [
            {"path": "/dev/vfio/vfio", "hostPath": "/dev/vfio/vfio", "permissions": "rw"},
            {"path": f"/dev/vfio/{group}", "hostPath": f"/dev/vfio/{group}", "permissions": "rw"},
        ]
    }


def test_cdi_allocation_and_spec(host: Host) -> None:
    alloc = host.allocator(cdi=True).allocate(pool(), [host.devices[VFIO1], host.devices[VFIO0]])
    names = ["example.com/net-pci-100g=0000:5e:02.1", "example.com/net-pci-100g=0000:5e:02.0"]
    assert alloc.cdi_devices == names
    assert alloc.annotations == {"cdi.k8s.io/example.com_net-pci-100g": ",".join(names)}
    assert alloc.devices == []  # the runtime injects them from the spec
    assert alloc.envs["PCIDEVICE_EXAMPLE_COM_100G"] == f"{VFIO1},{VFIO0}"
    assert _cdi_spec(host) == {
        "cdiVersion": "0.5.0",
        "kind": "example.com/net-pci-100g",
        "devices": [
            {"name": VFIO0, "containerEdits": _vfio_edits(4)},
            {"name": VFIO1, "containerEdits": _vfio_edits(5)},
        ],
    }
    assert files(os.path.join(host.root, "cdi")) == ["sriov-dp-example.com-net-pci-100g.json"]
    assert files(host.info_dir) == [
        f"example.com-100g-{VFIO0}-device.json",
        f"example.com-100g-{VFIO1}-device.json",
    ]


def test_cdi_spec_accumulates_and_survives_restart(host: Host) -> None:
    """A restarting container resolves its names again: earlier VFs must stay in the spec."""
    spec = pool(is_rdma=True)
    host.allocator(cdi=True).allocate(spec, [host.devices[RDMA0]])
    host.allocator(cdi=True).allocate(spec, [host.devices[RDMA1]])  # a new process
    got = _cdi_spec(host)
    assert [d["name"] for d in got["devices"]] == [RDMA0, RDMA1]
    assert got["devices"][1]["containerEdits"]["deviceNodes"] == [
        {"path": p, "hostPath": p, "permissions": "rw"}
        for p in ("/dev/infiniband/uverbs2", "/dev/infiniband/rdma_cm")
    ]
    assert files(os.path.join(host.root, "cdi")) == ["sriov-dp-example.com-net-pci-100g.json"]


def test_cdi_netdev_vf_has_nothing_to_inject(host: Host) -> None:
    """CDI rejects a device with empty edits, so a plain netdev VF is left out."""
    alloc = host.allocator(cdi=True).allocate(pool(), [host.devices[NET0], host.devices[VFIO0]])
    assert alloc.cdi_devices == [f"example.com/net-pci-100g={VFIO0}"]
    assert [d["name"] for d in _cdi_spec(host)["devices"]] == [VFIO0]
    alloc = host.allocator(cdi=True).allocate(pool(name="plain"), [host.devices[NET1]])
    assert (alloc.cdi_devices, alloc.annotations, alloc.devices) == ([], {}, [])


def test_write_cdi_spec_for_the_whole_pool(host: Host) -> None:
    alloc = host.allocator(cdi=True)
    spec = pool()
    path = alloc.write_cdi_spec(spec, list(host.devices.values()))
    assert path == os.path.join(host.root, "cdi", "sriov-dp-example.com-net-pci-100g.json")
    assert [d["name"] for d in _cdi_spec(host)["devices"]] == [VFIO0, VFIO1]
    alloc.write_cdi_spec(spec, [host.devices[VFIO1]])  # VFIO0 left the pool
    assert [d["name"] for d in _cdi_spec(host)["devices"]] == [VFIO1]
    alloc.remove_cdi_spec(spec)
    alloc.remove_cdi_spec(spec)
    assert files(os.path.join(host.root, "cdi")) == []


def test_cdi_pools_sharing_a_vf_get_separate_kinds(host: Host) -> None:
    """NSM-form pools may share a VF: one name in two spec files would be a CDI conflict."""
    alloc = host.allocator(cdi=True)
    a = alloc.allocate(pool("100g"), [host.devices[VFIO0]])
    b = alloc.allocate(pool("fast", prefix="other.org"), [host.devices[VFIO0]])
    assert a.cdi_devices == [f"example.com/net-pci-100g={VFIO0}"]
    assert b.cdi_devices == [f"other.org/net-pci-fast={VFIO0}"]
    assert files(os.path.join(host.root, "cdi")) == [
        "sriov-dp-example.com-net-pci-100g.json",
        "sriov-dp-other.org-net-pci-fast.json",
    ]


@pytest.mark.parametrize(
    ("prefix", "name", "kind"),
    [
        ("example.com", "100g", "example.com/net-pci-100g"),
        ("intel.com", "sriov_netdevice", "intel.com/net-pci-sriov_netdevice"),
        ("intel.com", "mlx-rdma", "intel.com/net-pci-mlx-rdma"),
        ("intel.com", "dpdk.nic", "intel.com/net-pci-dpdk_nic-8d6624be"),
    ],
)
def test_cdi_kind(prefix: str, name: str, kind: str) -> None:
    assert cdi_kind(pool(name, prefix)) == kind


def test_cdi_kind_of_a_prefix_starting_with_a_digit() -> None:
    with pytest.raises(AllocationError, match=re.escape("'1and1.com' cannot be a CDI vendor")):
        cdi_kind(pool(prefix="1and1.com"))


def test_cdi_annotation_key_stays_within_63() -> None:
    key = cdi_annotation_key("a" * 60 + ".com/net-pci-x")
    assert key.startswith("cdi.k8s.io/aaaa")
    assert len(key.removeprefix("cdi.k8s.io/")) == 63


def test_cdi_writes_are_atomic(host: Host) -> None:
    alloc = host.allocator(cdi=True)
    for dev in (VFIO0, VFIO1, VFIO0):
        alloc.allocate(pool(), [host.devices[dev]])
    assert files(os.path.join(host.root, "cdi")) == ["sriov-dp-example.com-net-pci-100g.json"]
    assert not [f for f in files(host.info_dir) if f.endswith(".tmp")]
