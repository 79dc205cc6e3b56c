"""Host specs: loading and its errors, VF index ranges, and what building a spec produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from nicinventory import SysfsReader, TorPort
from nicinventory.errors import ConfigError
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec, build_host, load_spec
from nicinventory.fakesysfs import parse_index_ranges as ranges

NIC = '{model: e810, pci_address: "0000:3b:00.0", ifname: ens1f0'
X710 = "{model: x710, pci_address: '0000:af:00.0'"


def write(tmp_path: Path, text: str, name: str = "host.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- errors ---------------------------------------------------------------------------------------

SPEC_ERRORS = [
    ("unknown-model", "nics: [{model: e999, pci_address: '0000:3b:00.0'}]", "nics.0.model", "e999"),
    ("bad-pci", "nics: [{model: e810, pci_address: '3b:00.0'}]", "nics.0.pci_address", "3b:00.0"),
    ("pci-uppercase", "nics: [{model: e810, pci_address: '0000:3B:00.0'}]", "nics.0.pci_address", ""),
    ("bad-vf-range", f"nics: [{NIC}, vfs: {{'3-1': netdev}}}}]", "nics.0.vfs", "3-1"),
    ("vf-range-text", f"nics: [{NIC}, vfs: {{'a-b': netdev}}}}]", "nics.0.vfs", "a-b"),
    ("overlap", f"nics: [{NIC}, vfs: {{'0-3': netdev, '2-4': vfio}}}}]", "nics.0.vfs", "twice"),
    ("gap", f"nics: [{NIC}, vfs: {{'0-1': netdev, '3': vfio}}}}]", "nics.0.vfs", "gaps"),
    ("not-from-0", f"nics: [{NIC}, vfs: {{'1-2': netdev}}}}]", "nics.0.vfs", "gaps"),
    ("bad-binding", f"nics: [{NIC}, vfs: {{'0': sriov}}}}]", "nics.0.vfs", "sriov"),
    ("nic-key", f"nics: [{NIC}, colour: red}}]", "nics.0.colour", ""),
    ("top-key", "hostnme: node-a\nnics: []", "hostnme", ""),
    ("tor-key", f"nics: [{NIC}, tor: {{switch: t, port: p, x: 1}}}}]", "nics.0.tor.x", ""),
    ("link", f"nics: [{NIC}, link: sideways}}]", "nics.0.link", ""),
    ("second-nic", f"nics: [{NIC}}}, {{model: x710, pci_address: nope}}]", "nics.1.pci_address", ""),
    ("other-device", "other_devices: [{pci_address: '0000:5e:00.0', vendor: '144d'}]", "other_devices.0", ""),
    ("too-many-vfs", f"nics: [{NIC}, vfs: {{'0-128': netdev}}}}]", "nics.0.vfs", "128"),
    ("x710-too-many", f"nics: [{X710}, vfs: {{'0-64': vfio}}}}]", "nics.0.vfs", "65 asked"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "field", "fragment"), [c[1:] for c in SPEC_ERRORS], ids=[c[0] for c in SPEC_ERRORS]
)
def test_load_spec_errors_name_file_and_field(
    tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {field}")
    assert fragment in msg
    assert "\n" not in msg


def test_load_spec_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "nics: [\n  {model: e810\n")
    with pytest.raises(ConfigError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and "YAML" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("content", "fragment"), [(b"- a\n- b\n", "(top level)"), (b"\xff\xfe\x00nics: []", "UTF-8")]
)
def test_load_spec_unusable_document(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "host.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        load_spec(str(path))
    assert str(exc.value).startswith(f"{path}: ") and fragment in str(exc.value)


def test_load_spec_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"absent\.yaml: No such file"):
        load_spec(path)


def test_load_spec_accepts_a_valid_file(tmp_path: Path) -> None:
    spec = load_spec(
        write(tmp_path, f"hostname: n1\nnics: [{NIC}, vfs: {{'0-2': vfio, '3': netdev}}}}]")
    )
    assert spec.hostname == "n1"
    assert [v.binding for v in spec.nics[0].vf_specs()] == ["vfio", "vfio", "vfio", "netdev"]
    assert load_spec(write(tmp_path, "", "empty.yaml")).nics == []


# -- parse_index_ranges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0", [0]),
        ("0-3", [0, 1, 2, 3]),
        ("0,2-4", [0, 2, 3, 4]),
        (" 1 , 3 ", [1, 3]),
        ("5-5", [5]),
        ("10-12,1", [10, 11, 12, 1]),
        (7, [7]),
    ],
)
def test_parse_index_ranges(text: str, want: list[int]) -> None:
    assert ranges(text) == want


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-1", "1,,2", "0x1", "1-2-3", "1.5", "2 3"])
def test_parse_index_ranges_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ranges(text)


# -- building -------------------------------------------------------------------------------------


def test_bundled_sample_builds_the_expected_host(tmp_path: Path) -> None:
    spec = load_spec(None)
    built = build_host(spec, str(tmp_path / "sys"))
    assert (spec.hostname, len(built.pfs)) == ("node-a", 5)
    inv = SysfsReader(built.sysfs.root).scan()
    drivers = {n.ifname: [v.driver for v in n.sriov.vfs] if n.sriov else None for n in inv.nics}
    assert drivers == {
        "ens1f0": ["iavf"] * 6 + ["vfio-pci", None],
        "ens1f1": ["iavf"] * 4,
        "ens3f0np0": ["mlx5_core"] * 4 + ["vfio-pci"] * 2,
        "ens5f0": ["iavf"] * 4,
        "ens7f0": [],
    }
    assert [len(p.vf_addresses) for p in built.pfs] == [8, 4, 6, 4, 0]
    assert (tmp_path / "sys/bus/pci/devices/0000:5e:00.0").is_dir()  # the NVMe drive is in the tree
    assert spec.tor_map() == {
        "0000:3b:00.0": TorPort("tor-a", "Ethernet1/1", "config"),
        "0000:3b:00.1": TorPort("tor-a", "Ethernet1/2", "config"),
        "0000:86:00.0": TorPort("tor-b", "Ethernet2/1", "config"),
    }


@pytest.mark.parametrize(
    ("model", "total"), [("e810", 128), ("cx6dx", 127), ("x710", 64), ("82599", 63)]
)
def test_two_ports_of_one_card_get_distinct_vf_addresses(
    tmp_path: Path, model: str, total: int
) -> None:
    fs = FakeSysfs(str(tmp_path))
    pfs = [
        fs.add_pf(PFSpec(model, f"0000:3b:00.{fn}", f"p{fn}", vfs=[VFSpec("unbound")] * total))
        for fn in (0, 1)
    ]
    a, b = (set(p.vf_addresses) for p in pfs)
    assert len(a) == len(b) == total
    assert not a & b
    assert not (a | b) & {"0000:3b:00.0", "0000:3b:00.1"}
    inv = SysfsReader(str(tmp_path)).scan()
    assert [n.pci_address for n in inv.nics] == ["0000:3b:00.0", "0000:3b:00.1"]
    for nic, built in zip(inv.nics, pfs, strict=True):
        assert nic.sriov is not None
        assert [v.pci_address for v in nic.sriov.vfs] == list(built.vf_addresses)


def test_too_many_vfs_rejected_by_the_builder(tmp_path: Path) -> None:
    fs = FakeSysfs(str(tmp_path))
    with pytest.raises(ValueError, match="64 VFs"):
        fs.add_pf(PFSpec("x710", "0000:af:00.0", "ens5f0", vfs=[VFSpec()] * 65))
    built = fs.add_pf(PFSpec("x710", "0000:af:00.1", "ens5f1", vfs=[VFSpec("vfio")] * 64))
    assert len(built.vf_addresses) == 64


def test_pf_without_netdev_can_have_vfs(tmp_path: Path) -> None:
    spec = load_spec(
        write(tmp_path, "nics: [{model: e810, pci_address: '0000:3b:00.0', vfs: {'0-1': netdev}}]")
    )
    built = build_host(spec, str(tmp_path / "sys"))
    (nic,) = SysfsReader(built.sysfs.root).scan().nics
    assert nic.ifname is None and nic.sriov is not None
    assert [v.ifname for v in nic.sriov.vfs] == ["vf0", "vf1"]


def test_duplicate_pci_address_rejected(tmp_path: Path) -> None:
    fs = FakeSysfs(str(tmp_path))
    fs.add_pf(PFSpec("e810", "0000:3b:00.0", "ens1f0"))
    with pytest.raises(ValueError, match="already in the tree"):
        fs.add_pf(PFSpec("x710", "0000:3b:00.0", "ens5f0"))


def test_devices_hang_off_a_root_port_on_the_bus_above(tmp_path: Path) -> None:
    """As on real hosts: devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0, root-bus devices directly."""
    fs = FakeSysfs(str(tmp_path / "sys"))
    fs.add_pf(PFSpec(model="e810", pci_address="0000:3b:00.0", ifname="p0"))
    fs.add_device("0000:00:04.0", "8086", "0d57", "0x060000", "pcieport")
    devices = tmp_path / "sys" / "devices"
    assert (
        Path(fs.device_dir("0000:3b:00.0"))
        == devices / "pci0000:3a" / "0000:3a:00.0" / "0000:3b:00.0"
    )
    assert Path(fs.device_dir("0000:00:04.0")) == devices / "pci0000:00" / "0000:00:04.0"
