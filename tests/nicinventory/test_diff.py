"""diff_nic on plain data: which Change records one reading of a NIC gives against the next."""

from __future__ import annotations

import dataclasses

from nicinventory.diff import Change, diff_nic
from nicinventory.model import NIC, VF, Link, Sriov, TorPort

PF = "0000:3b:00.0"


def vf(index: int, driver: str | None = "iavf", ifname: str | None = "") -> VF:
    """VF `index` of PF; a netdev VF named ens1f0v<index> unless told otherwise."""
    return VF(
        index=index,
        pci_address=f"0000:3b:02.{index}",
        device_id="1889",
        driver=driver,
        ifname=f"ens1f0v{index}" if ifname == "" else ifname,
        iommu_group=10 + index,
        rdma=False,
    )


def nic(
    vfs: tuple[VF, ...] = (),
    num_vfs: int | None = None,
    link: Link | None = None,
    sriov: bool = True,
    pci_address: str = PF,
    ifname: str | None = "ens1f0",
) -> NIC:
    return NIC(
        pci_address=pci_address,
        ifname=ifname,
        vendor_id="8086",
        device_id="1592",
        driver="ice",
        numa_node=0,
        link=link or Link("up", True, 100000, 1500, "02:00:00:3b:00:00"),
        tor=TorPort("tor-a", "Ethernet1/1"),
        sriov=Sriov(128, len(vfs) if num_vfs is None else num_vfs, vfs) if sriov else None,
        model="Intel E810-C 100G",
        iommu_group=1,
    )


def by_kind(changes: list[Change]) -> dict[str, list[Change]]:
    out: dict[str, list[Change]] = {}
    for c in changes:
        out.setdefault(c.kind, []).append(c)
    return out


def test_identical_nics_give_no_change() -> None:
    a = nic((vf(0), vf(1)))
    b = nic((vf(0), vf(1)))  # equal, not the same object
    assert a is not b
    assert diff_nic(a, b) == []
    assert diff_nic(None, None) == []


def test_added_nic() -> None:
    new = nic((vf(0),))
    [c] = diff_nic(None, new, source="udev", time=12.5)
    assert (c.kind, c.nic, c.pci_address, c.ifname) == ("nic-added", PF, PF, "ens1f0")
    assert (c.vf_index, c.fields, c.source, c.time) == (None, {}, "udev", 12.5)


def test_removed_nic_names_what_was_there() -> None:
    [c] = diff_nic(nic((vf(0),)), None, source="rescan")
    assert (c.kind, c.nic, c.pci_address, c.ifname, c.source) == (
        "nic-removed",
        PF,
        PF,
        "ens1f0",
        "rescan",
    )


def test_link_down_is_one_nic_changed_with_dotted_fields() -> None:
    old = nic((vf(0),))
    new = nic((vf(0),), link=Link("down", False, None, 1500, "02:00:00:3b:00:00"))
    [c] = diff_nic(old, new, source="netlink")
    assert c.kind == "nic-changed"
    assert (c.nic, c.pci_address, c.ifname, c.vf_index) == (PF, PF, "ens1f0", None)
    assert c.fields == {
        "link.state": ("up", "down"),
        "link.carrier": (True, False),
        "link.speed_mbps": (100000, None),
    }


def test_mtu_and_mac_change() -> None:
    old = nic()
    new = nic(link=Link("up", True, 100000, 9000, "02:00:00:00:00:99"))
    [c] = diff_nic(old, new)
    assert c.fields == {
        "link.mtu": (1500, 9000),
        "link.mac": ("02:00:00:3b:00:00", "02:00:00:00:00:99"),
    }


def test_netdev_appearing_on_a_pf_without_one() -> None:
    old = dataclasses.replace(nic(), ifname=None, link=None)
    [c] = diff_nic(old, nic())
    assert c.kind == "nic-changed"
    assert c.fields["ifname"] == (None, "ens1f0")
    assert c.fields["link.state"] == (None, "up")
    assert c.fields["link.carrier"] == (None, True)


def test_tor_change() -> None:
    old = nic()
    new = dataclasses.replace(old, tor=TorPort("tor-b", "Ethernet9/9", "lldp"))
    [c] = diff_nic(old, new)
    assert c.fields == {
        "tor.switch": ("tor-a", "tor-b"),
        "tor.port": ("Ethernet1/1", "Ethernet9/9"),
        "tor.source": ("config", "lldp"),
    }


def test_vf_added() -> None:
    old = nic((vf(0),))
    new = nic((vf(0), vf(1)))
    kinds = by_kind(diff_nic(old, new, source="udev"))
    assert set(kinds) == {"nic-changed", "vf-added"}
    [added] = kinds["vf-added"]
    assert (added.nic, added.pci_address, added.ifname, added.vf_index) == (
        PF,
        "0000:3b:02.1",
        "ens1f0v1",
        1,
    )
    assert added.source == "udev"
    # the VF list is not a NIC field: only the count shows on the NIC
    assert kinds["nic-changed"][0].fields == {"sriov.num_vfs": (1, 2)}


def test_vf_removed() -> None:
    old = nic((vf(0), vf(1), vf(2)))
    new = nic((vf(0),))
    kinds = by_kind(diff_nic(old, new))
    removed = kinds["vf-removed"]
    assert [(c.pci_address, c.vf_index, c.ifname) for c in removed] == [
        ("0000:3b:02.1", 1, "ens1f0v1"),
        ("0000:3b:02.2", 2, "ens1f0v2"),
    ]
    assert all(c.nic == PF for c in removed)
    assert kinds["nic-changed"][0].fields == {"sriov.num_vfs": (3, 1)}


def test_vf_unbound_from_its_netdev_driver() -> None:
    old = nic((vf(0), vf(1)))
    new = nic((vf(0), vf(1, driver=None, ifname=None)))
    [c] = diff_nic(old, new, source="udev")
    assert c.kind == "vf-changed"
    assert (c.nic, c.pci_address, c.vf_index, c.ifname) == (PF, "0000:3b:02.1", 1, None)
    assert c.fields == {"driver": ("iavf", None), "ifname": ("ens1f0v1", None)}


def test_vf_rebound_to_vfio() -> None:
    old = nic((vf(0, driver=None, ifname=None),))
    new = nic((vf(0, driver="vfio-pci", ifname=None),))
    [c] = diff_nic(old, new)
    assert c.kind == "vf-changed"
    assert c.fields == {"driver": (None, "vfio-pci")}


def test_num_vfs_change_without_vfs_listed() -> None:
    """sriov_numvfs is written before the VF functions appear: the count alone is a change."""
    [c] = diff_nic(nic(num_vfs=0), nic(num_vfs=4))
    assert c.kind == "nic-changed"
    assert c.fields == {"sriov.num_vfs": (0, 4)}


def test_sriov_capability_disappearing() -> None:
    [c] = diff_nic(nic(), nic(sriov=False))
    assert c.kind == "nic-changed"
    assert c.fields["sriov.total_vfs"] == (128, None)
    assert c.fields["sriov.num_vfs"] == (0, None)


def test_to_dict_is_the_json_shape() -> None:
    old = nic((vf(0),))
    new = nic((vf(0, driver=None, ifname=None),))
    [c] = diff_nic(old, new, source="udev", time=1.0)
    assert c.to_dict() == {
        "time": 1.0,
        "kind": "vf-changed",
        "source": "udev",
        "nic": PF,
        "pci_address": "0000:3b:02.0",
        "ifname": None,
        "vf_index": 0,
        "fields": {
            "driver": {"old": "iavf", "new": None},
            "ifname": {"old": "ens1f0v0", "new": None},
        },
    }
