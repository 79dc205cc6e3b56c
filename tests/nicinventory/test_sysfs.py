"""Discovery on fake sysfs trees built like the kernel's, plus a smoke test on the real /sys."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nicinventory import Inventory, SysfsReader
from nicinventory.fakesysfs import BuiltHost, FakeSysfs, PFSpec, VFSpec, build_host, load_spec
from nicinventory.sysfs import read_attr

# -- the `list -o json` contract ------------------------------------------------------------------

PCI_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
HEX4_RE = re.compile(r"^[0-9a-f]{4}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
Rule = Callable[[Any], bool]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _opt(rule: Rule) -> Rule:
    return lambda v: v is None or rule(v)


def _str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _like(pattern: re.Pattern[str]) -> Rule:
    return lambda v: isinstance(v, str) and pattern.match(v) is not None


LINK = {
    "state": _opt(_str),
    "speed_mbps": _opt(_int),
    "mtu": _opt(_int),
    "mac": _opt(_like(MAC_RE)),
}
TOR = {"switch": _str, "port": _str}
SRIOV = {"total_vfs": _int, "num_vfs": _int, "vfs": lambda v: isinstance(v, list)}
VF = {
    "index": _int,
    "pci_address": _like(PCI_RE),
    "device_id": _opt(_like(HEX4_RE)),
    "driver": _opt(_str),
    "ifname": _opt(_str),
    "iommu_group": _opt(_int),
    "rdma": lambda v: isinstance(v, bool),
}
NIC = {
    "pci_address": _like(PCI_RE),
    "ifname": _opt(_str),
    "vendor_id": _opt(_like(HEX4_RE)),
    "device_id": _opt(_like(HEX4_RE)),
    "driver": _opt(_str),
    "numa_node": _opt(_int),
    "link": lambda v: v is None or not _errors(v, LINK, ""),
    "tor": lambda v: v is None or not _errors(v, TOR, ""),
    "sriov": lambda v: True,  # checked below, VF by VF
}


def _errors(obj: Any, rules: dict[str, Rule], where: str) -> list[str]:
    """The keys of obj that are missing or break their rule (extra keys are allowed)."""
    if not isinstance(obj, dict):
        return [f"{where}: not an object: {obj!r}"]
    missing = sorted(rules.keys() - obj.keys())
    if missing:
        return [f"{where}: missing {missing}"]
    return [f"{where}.{k}: {obj[k]!r}" for k, ok in rules.items() if not ok(obj[k])]


def nic_contract_errors(nic: Any, where: str = "nic") -> list[str]:
    """Every way one NIC object breaks the `list -o json` contract; [] when it conforms."""
    errs = _errors(nic, NIC, where)
    sriov = nic.get("sriov") if isinstance(nic, dict) else None
    if errs or sriov is None:
        return errs
    errs = _errors(sriov, SRIOV, f"{where}.sriov")
    if errs:
        return errs
    if sriov["num_vfs"] > sriov["total_vfs"]:
        errs.append(f"{where}.sriov: num_vfs {sriov['num_vfs']} > {sriov['total_vfs']}")
    for i, vf in enumerate(sriov["vfs"]):
        errs += _errors(vf, VF, f"{where}.sriov.vfs.{i}")
    indexes = [vf.get("index") for vf in sriov["vfs"] if isinstance(vf, dict)]
    if indexes != sorted(set(indexes), key=lambda x: (x is None, x)):
        errs.append(f"{where}.sriov.vfs: indexes not strictly increasing: {indexes}")
    return errs


def assert_inventory_contract(doc: Any) -> None:
    """`list -o json` output: {"nics": [NIC, ...]}, each NIC conforming and JSON-serialisable."""
    assert isinstance(doc, dict) and isinstance(doc.get("nics"), list), doc
    json.dumps(doc)
    errs = [e for i, n in enumerate(doc["nics"]) for e in nic_contract_errors(n, f"nics.{i}")]
    assert errs == []


def test_the_contract_validator_rejects_broken_documents(sample_host: BuiltHost) -> None:
    good = SysfsReader(sample_host.sysfs.root).scan().nics[0].to_dict()
    assert nic_contract_errors(good) == []
    breakages = [
        ("vendor_id", "0x8086"),
        ("device_id", "1592A"),
        ("pci_address", "3b:00.0"),
        ("numa_node", -1),
        ("link", {"state": "up"}),
        ("tor", {"switch": "tor-a"}),
        ("sriov", {"total_vfs": 4, "num_vfs": 8, "vfs": []}),
    ]
    for key, value in breakages:
        assert nic_contract_errors({**good, key: value}) != [], key
    vfs = good["sriov"]["vfs"]
    swapped = {**good["sriov"], "vfs": [vfs[1], vfs[0], *vfs[2:]]}
    assert nic_contract_errors({**good, "sriov": swapped}) != []
    assert nic_contract_errors({k: v for k, v in good.items() if k != "tor"}) != []


# -- per-model tables -----------------------------------------------------------------------------

# model: vendor, device, driver, VF device, VF driver, total VFs, speed, RDMA
MODELS = {
    "e810": ("8086", "1592", "ice", "1889", "iavf", 128, 100000, False),
    "cx6dx": ("15b3", "101d", "mlx5_core", "101e", "mlx5_core", 127, 100000, True),
    "x710": ("8086", "1572", "i40e", "154c", "iavf", 64, 10000, False),
    "82599": ("8086", "10fb", "ixgbe", "10ed", "ixgbevf", 63, 10000, False),
}
PF = "0000:3b:00.0"


def scan_one(root: Path, spec: PFSpec) -> tuple[FakeSysfs, Inventory]:
    fs = FakeSysfs(str(root))
    fs.add_pf(spec)
    return fs, SysfsReader(str(root)).scan()


def iommu_members(root: Path, group: int) -> list[str]:
    return os.listdir(root / "kernel" / "iommu_groups" / str(group) / "devices")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_pf_identity_per_model(tmp_path: Path, model: str) -> None:
    vendor, device, driver, _, _, total, speed, rdma = MODELS[model]
    spec = PFSpec(model, PF, "ens1f0", numa_node=1, mtu=9000, mac="02:AA:00:00:00:01")
    spec.vfs = [VFSpec()] * 2
    _, inv = scan_one(tmp_path, spec)
    (nic,) = inv.nics
    assert (nic.pci_address, nic.ifname, nic.driver) == (PF, "ens1f0", driver)
    assert (nic.vendor_id, nic.device_id, nic.numa_node) == (vendor, device, 1)
    assert nic.link is not None
    assert (nic.link.state, nic.link.carrier, nic.link.speed_mbps) == ("up", True, speed)
    assert (nic.link.mtu, nic.link.mac) == (9000, "02:aa:00:00:00:01")
    assert nic.rdma is rdma
    assert nic.model is not None
    assert isinstance(nic.iommu_group, int) and PF in iommu_members(tmp_path, nic.iommu_group)
    assert nic.sriov is not None
    assert (nic.sriov.total_vfs, nic.sriov.num_vfs, len(nic.sriov.vfs)) == (total, 2, 2)
    assert nic_contract_errors(nic.to_dict()) == []


@pytest.mark.parametrize("binding", ["netdev", "vfio", "unbound"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_vf_binding_per_model(tmp_path: Path, model: str, binding: str) -> None:
    _, _, _, vf_device, vf_driver, _, _, rdma = MODELS[model]
    fs = FakeSysfs(str(tmp_path))
    built = fs.add_pf(PFSpec(model, PF, "ens1f0", vfs=[VFSpec(binding=binding) for _ in range(3)]))
    (nic,) = SysfsReader(str(tmp_path)).scan().nics
    assert nic.sriov is not None
    vfs = nic.sriov.vfs
    assert [v.index for v in vfs] == [0, 1, 2]
    assert [v.pci_address for v in vfs] == list(built.vf_addresses)
    want_driver = {"netdev": vf_driver, "vfio": "vfio-pci", "unbound": None}[binding]
    for vf in vfs:
        assert vf.device_id == vf_device
        assert vf.driver == want_driver
        want_ifname = f"ens1f0v{vf.index}" if binding == "netdev" else None
        assert vf.ifname == want_ifname
        assert vf.rdma is (rdma and binding == "netdev")
        assert isinstance(vf.iommu_group, int) and not isinstance(vf.iommu_group, bool)
        assert iommu_members(tmp_path, vf.iommu_group) == [vf.pci_address]
    groups = {v.iommu_group for v in vfs} | {nic.iommu_group}
    assert len(groups) == 4


def test_vfs_are_ordered_by_index_not_by_name(tmp_path: Path) -> None:
    _, inv = scan_one(tmp_path, PFSpec("e810", PF, "ens1f0", vfs=[VFSpec()] * 12))
    vfs = inv.nics[0].sriov.vfs  # type: ignore[union-attr]
    assert [v.index for v in vfs] == list(range(12))  # virtfn10 must not sort before virtfn2
    assert [v.pci_address for v in vfs[:3]] == ["0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"]
    assert vfs[8].pci_address == "0000:3b:03.0"
    assert [v.ifname for v in vfs[9:]] == ["ens1f0v9", "ens1f0v10", "ens1f0v11"]


# -- link, SR-IOV state and odd devices -----------------------------------------------------------


def test_pf_with_link_down(tmp_path: Path) -> None:
    fs, inv = scan_one(tmp_path, PFSpec("x710", PF, "ens5f0", link_up=False))
    assert (tmp_path / "class/net/ens5f0/speed").read_text().strip() == "-1"
    link = inv.nics[0].link
    assert link is not None
    assert (link.state, link.carrier, link.speed_mbps, link.mtu) == ("down", False, None, 1500)
    fs.set_link("ens5f0", up=True)
    link = SysfsReader(str(tmp_path)).scan().nics[0].link
    assert link is not None and (link.state, link.carrier, link.speed_mbps) == ("up", True, 10000)


def test_pf_with_sriov_disabled(tmp_path: Path) -> None:
    _, inv = scan_one(tmp_path, PFSpec("82599", PF, "ens7f0", vfs=[]))
    sriov = inv.nics[0].sriov
    assert sriov is not None
    assert (sriov.total_vfs, sriov.num_vfs, sriov.vfs) == (63, 0, ())


def test_nic_without_sriov_capability(tmp_path: Path) -> None:
    _, inv = scan_one(tmp_path, PFSpec("x710", PF, "ens5f0", sriov=False))
    assert inv.nics[0].sriov is None
    assert inv.nics[0].to_dict()["sriov"] is None


def test_non_network_device_is_skipped(tmp_path: Path) -> None:
    fs = FakeSysfs(str(tmp_path))
    fs.add_device("0000:5e:00.0", "144d", "a808", "0x010802", "nvme")
    fs.add_pf(PFSpec("e810", PF, "ens1f0"))
    assert (tmp_path / "bus/pci/devices/0000:5e:00.0/class").exists()
    inv = SysfsReader(str(tmp_path)).scan()
    assert [n.pci_address for n in inv.nics] == [PF]
    assert inv.find("0000:5e:00.0") is None


def test_numa_node_minus_one_is_none(tmp_path: Path) -> None:
    _, inv = scan_one(tmp_path, PFSpec("e810", PF, "ens1f0", numa_node=-1))
    assert inv.nics[0].numa_node is None


VF0 = "0000:3b:02.0"
GARBAGE = [
    (f"{PF}/vendor", b"intel\n", lambda n: n.vendor_id),
    (f"{PF}/device", b"0x1592ab\n", lambda n: n.device_id),
    (f"{PF}/numa_node", b"zero\n", lambda n: n.numa_node),
    (f"{PF}/sriov_numvfs", b"\xff\xfe\x00\n", lambda n: n.sriov.num_vfs or None),
    (f"{PF}/net/ens1f0/speed", b"fast\n", lambda n: n.link.speed_mbps),
    (f"{PF}/net/ens1f0/mtu", b"", lambda n: n.link.mtu),
    (f"{PF}/net/ens1f0/carrier", b"maybe\n", lambda n: n.link.carrier),
    (f"{PF}/net/ens1f0/address", b"  \n", lambda n: n.link.mac),
    (f"{VF0}/device", b"\x00\x01garbage", lambda n: n.sriov.vfs[0].device_id),
]


@pytest.mark.parametrize(("rel", "content", "get"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_in_attribute_file_reads_as_none(
    tmp_path: Path, rel: str, content: bytes, get: Any
) -> None:
    fs, before = scan_one(tmp_path, PFSpec("e810", PF, "ens1f0", vfs=[VFSpec()] * 2))
    assert get(before.nics[0]) is not None
    bdf, _, rest = rel.partition("/")
    Path(fs.device_dir(bdf), rest).write_bytes(content)
    (nic,) = SysfsReader(str(tmp_path)).scan().nics
    assert get(nic) is None
    assert nic.pci_address == PF and nic.sriov is not None and len(nic.sriov.vfs) == 2


def test_dangling_virtfn_link_is_skipped(tmp_path: Path) -> None:
    fs, _ = scan_one(tmp_path, PFSpec("e810", PF, "ens1f0", vfs=[VFSpec()] * 3))
    gone = os.path.basename(os.readlink(Path(fs.device_dir(PF), "virtfn1")))
    fs.remove_device(gone)  # the VF is gone; its virtfn1 link stays behind
    link = Path(fs.device_dir(PF), "virtfn1")
    assert os.path.lexists(link) and not link.exists()
    (nic,) = SysfsReader(str(tmp_path)).scan().nics
    assert nic.sriov is not None
    assert [v.index for v in nic.sriov.vfs] == [0, 2]
    assert gone not in {v.pci_address for v in nic.sriov.vfs}


@pytest.mark.parametrize("how", ["never", "removed", "empty"])
def test_pf_without_net_dir(tmp_path: Path, how: str) -> None:
    fs = FakeSysfs(str(tmp_path))
    fs.add_pf(PFSpec("e810", PF, None if how == "never" else "ens1f0", vfs=[VFSpec()]))
    net = Path(fs.device_dir(PF), "net")
    if how != "never":
        shutil.rmtree(net)
    if how == "empty":
        net.mkdir()
    (nic,) = SysfsReader(str(tmp_path)).scan().nics
    assert (nic.ifname, nic.link) == (None, None)
    assert nic.sriov is not None and len(nic.sriov.vfs) == 1
    assert nic_contract_errors(nic.to_dict()) == []


# -- lookups --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pf"),
    [
        ("ens1f0", "0000:3b:00.0"),
        ("0000:3b:00.1", "0000:3b:00.1"),
        ("0000:3B:00.1", "0000:3b:00.1"),
        ("0000:3b:02.6", "0000:3b:00.0"),  # a vfio VF of ens1f0
        ("ens3f0np0v2", "0000:86:00.0"),  # a netdev VF
        ("ens7f0", "0000:d8:00.0"),
        ("ens9f9", None),
        ("0000:5e:00.0", None),  # the NVMe drive
    ],
)
def test_inventory_find(sample_host: BuiltHost, name: str, pf: str | None) -> None:
    nic = SysfsReader(sample_host.sysfs.root).scan().find(name)
    assert (nic.pci_address if nic else None) == pf


def test_owner_and_device_lookups(sample_host: BuiltHost) -> None:
    reader = SysfsReader(sample_host.sysfs.root)
    assert reader.owner_of("0000:3b:02.3") == "0000:3b:00.0"
    assert reader.owner_of("0000:3b:00.1") == "0000:3b:00.1"
    assert reader.owner_of("0000:3b:7f.0") is None
    assert reader.is_vf("0000:3b:02.3") and not reader.is_vf("0000:3b:00.0")
    assert reader.device_of_ifname("ens3f0np0v1") == "0000:86:02.1"
    assert reader.device_of_ifname("nope0") is None


# -- the tree itself ------------------------------------------------------------------------------


def symlinks(root: Path) -> list[Path]:
    return [
        Path(d, n)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
        if Path(d, n).is_symlink()
    ]


def assert_self_contained(root: Path) -> None:
    """Every link relative, staying inside root by its own path (not only once resolved), live."""
    links = symlinks(root)
    assert len(links) > 50
    absolute = [str(p) for p in links if os.path.isabs(os.readlink(p))]
    assert absolute == []
    climbing = [
        str(p)
        for p in links
        if os.path.normpath(os.path.join(os.path.relpath(p.parent, root), os.readlink(p))).split(
            os.sep
        )[0]
        == os.pardir
    ]
    assert climbing == []
    dangling = [str(p) for p in links if not p.exists()]
    assert dangling == []


def test_tree_uses_relative_symlinks_and_survives_a_copy(
    sample_host: BuiltHost, tmp_path: Path
) -> None:
    root = Path(sample_host.sysfs.root)
    assert_self_contained(root)
    before = SysfsReader(str(root)).scan()
    copy = tmp_path / "elsewhere" / "sys"
    shutil.copytree(root, copy, symlinks=True)
    shutil.rmtree(root)  # a copy that still pointed into the original would now break
    assert SysfsReader(str(copy)).scan() == before
    assert len(before.nics) == 5


def test_tree_built_through_a_symlinked_path_stays_self_contained(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    built = build_host(load_spec(None), str(tmp_path / "alias" / "sys"))
    before = SysfsReader(built.sysfs.root).scan()
    assert_self_contained(tmp_path / "real" / "sys")
    shutil.copytree(tmp_path / "real" / "sys", tmp_path / "copy", symlinks=True)
    shutil.rmtree(tmp_path / "real")
    assert SysfsReader(str(tmp_path / "copy")).scan() == before


# -- the real kernel ------------------------------------------------------------------------------


def test_unreadable_attribute_on_the_real_kernel_is_none() -> None:
    path = "/sys/class/net/lo/speed"
    if not os.path.exists(path):
        pytest.skip("no /sys/class/net/lo")
    with pytest.raises(OSError):  # the kernel answers EINVAL: this is what read_attr must absorb
        Path(path).read_text()
    assert read_attr(path) is None
    assert read_attr("/sys/class/net/lo/mtu") == Path("/sys/class/net/lo/mtu").read_text().strip()


def test_real_sys_scan_follows_the_contract() -> None:
    if not os.path.isdir("/sys/bus/pci/devices"):
        pytest.skip("no PCI bus in /sys")
    inv = SysfsReader("/sys").scan()
    assert_inventory_contract(inv.to_dict())
    for nic in inv.nics:
        assert read_attr(f"/sys/bus/pci/devices/{nic.pci_address}/class").startswith("0x02")  # type: ignore[union-attr]
