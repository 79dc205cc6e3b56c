"""The netlink messages nsmgr sends to a PF for its VFs, and its reading of a PF's VF list.

veth refuses IFLA_VF_*, so these are checked on the wire format itself: what set_vf() encodes is
decoded back and compared with what `ip link set <pf> vf N ...` sends; a PF's RTM_NEWLINK with an
IFLA_VFINFO_LIST is built as a driver would report it and read back."""

from __future__ import annotations

from typing import Any

import pytest
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from nsmgr.netlink import Rtnl, VfInfo, link_info


def sent(setting: str, value: Any) -> list[tuple[str, dict[str, Any]]]:
    """The IFLA_VF_INFO attributes of the one message set_vf() sends for VF 3 of PF index 7."""
    rt = Rtnl()
    captured: list[Any] = []

    def call(msg: Any, mtype: int, flags: int, what: str) -> list[Any]:
        msg["header"]["type"] = mtype
        msg.encode()  # the bytes the kernel would get
        captured.append((msg, mtype))
        return []

    rt._call = call  # type: ignore[method-assign]
    try:
        rt.set_vf(7, 3, setting, value)
    finally:
        rt.close()
    ((msg, mtype),) = captured
    assert mtype == RTM_NEWLINK
    back = ifinfmsg(msg.data)
    back.decode()
    assert back["index"] == 7
    (info,) = [v for n, v in back.get_attr("IFLA_VFINFO_LIST")["attrs"] if n == "IFLA_VF_INFO"]
    return [(n, dict(v)) if not hasattr(v, "get_attr") else (n, v) for n, v in info["attrs"]]


def test_vlan_8021q_is_ifla_vf_vlan() -> None:
    ((name, v),) = sent("vlan", (100, 5, "802.1Q"))
    assert name == "IFLA_VF_VLAN"
    assert (v["vf"], v["vlan"], v["qos"]) == (3, 100, 5)


def test_vlan_8021ad_is_a_vlan_list() -> None:
    ((name, vlist),) = sent("vlan", (200, 0, "802.1ad"))
    assert name == "IFLA_VF_VLAN_LIST"
    ((inner, ivvi),) = vlist["attrs"]
    assert inner == "IFLA_VF_VLAN_INFO"
    assert (ivvi["vf"], ivvi["vlan"], ivvi["qos"], ivvi["proto"]) == (3, 200, 0, 0x88A8)


@pytest.mark.parametrize(
    ("setting", "value", "attr", "fields"),
    [
        ("mac", "02:aa:bb:cc:dd:ee", "IFLA_VF_MAC", {"mac": "02:aa:bb:cc:dd:ee"}),
        ("spoofchk", False, "IFLA_VF_SPOOFCHK", {"spoofchk": 0}),
        ("trust", True, "IFLA_VF_TRUST", {"trust": 1}),
        ("rate", (100, 2500), "IFLA_VF_RATE", {"min_tx_rate": 100, "max_tx_rate": 2500}),
        ("link_state", "disable", "IFLA_VF_LINK_STATE", {"link_state": 2}),
    ],
)
def test_one_setting_per_message(
    setting: str, value: Any, attr: str, fields: dict[str, Any]
) -> None:
    ((name, v),) = sent(setting, value)
    assert name == attr
    assert v["vf"] == 3
    for key, want in fields.items():
        assert v[key] == want


def test_unknown_setting() -> None:
    rt = Rtnl()
    try:
        with pytest.raises(ValueError, match="unknown VF setting"):
            rt.set_vf(1, 0, "colour", "blue")
    finally:
        rt.close()


def pf_message(vfs: list[list[tuple[str, dict[str, Any]]]]) -> Any:
    msg = ifinfmsg()
    msg["index"] = 7
    msg["flags"] = 1
    msg["attrs"] = [
        ("IFLA_IFNAME", "ens1f0"),
        ("IFLA_ADDRESS", "02:00:00:3b:00:00"),
        ("IFLA_MTU", 9000),
        ("IFLA_NUM_VF", len(vfs)),
        ("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": v}) for v in vfs]}),
    ]
    msg.encode()
    back = ifinfmsg(msg.data)
    back.decode()
    return back


def test_reads_a_pf_vf_list() -> None:
    vf0 = [
        ("IFLA_VF_MAC", {"vf": 0, "mac": "02:11:22:33:44:55"}),
        ("IFLA_VF_VLAN", {"vf": 0, "vlan": 100, "qos": 3}),
        ("IFLA_VF_RATE", {"vf": 0, "min_tx_rate": 10, "max_tx_rate": 1000}),
        ("IFLA_VF_SPOOFCHK", {"vf": 0, "spoofchk": 1}),
        ("IFLA_VF_LINK_STATE", {"vf": 0, "link_state": 1}),
        ("IFLA_VF_TRUST", {"vf": 0, "trust": 0}),
    ]
    vf1 = [  # 802.1ad in the VLAN list; spoofchk/trust the driver does not report: (u32)-1
        ("IFLA_VF_MAC", {"vf": 1, "mac": "00:00:00:00:00:00"}),
        ("IFLA_VF_VLAN", {"vf": 1, "vlan": 0, "qos": 0}),
        (
            "IFLA_VF_VLAN_LIST",
            {"attrs": [("IFLA_VF_VLAN_INFO", {"vf": 1, "vlan": 300, "qos": 0, "proto": 0x88A8})]},
        ),
        ("IFLA_VF_SPOOFCHK", {"vf": 1, "spoofchk": 0xFFFFFFFF}),
        ("IFLA_VF_TRUST", {"vf": 1, "trust": 0xFFFFFFFF}),
    ]
    link = link_info(pf_message([vf0, vf1]))
    assert (link.name, link.mtu, link.up, link.mac) == ("ens1f0", 9000, True, "02:00:00:3b:00:00")
    assert link.vfs == (
        VfInfo(0, "02:11:22:33:44:55", 100, 3, "802.1Q", True, False, 10, 1000, "enable"),
        VfInfo(1, "00:00:00:00:00:00", 300, 0, "802.1ad", None, None, 0, 0, "auto"),
    )


def test_a_link_without_vfs_reports_none() -> None:
    msg = ifinfmsg()
    msg["index"] = 3
    msg["attrs"] = [("IFLA_IFNAME", "veth0"), ("IFLA_MTU", 1500)]
    msg.encode()
    back = ifinfmsg(msg.data)
    back.decode()
    assert link_info(back).vfs is None


def test_the_lean_reader_agrees_with_pyroute2() -> None:
    from nsmgr.netlink import lean_link

    msg = ifinfmsg()
    msg["index"] = 42
    msg["flags"] = 0x1043
    msg["attrs"] = [
        ("IFLA_IFNAME", "ens1f0v3"),
        ("IFLA_ADDRESS", "02:aa:bb:cc:dd:0e"),
        ("IFLA_MTU", 9000),
        ("IFLA_MAX_MTU", 9702),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
        (
            "IFLA_PROP_LIST",
            {"attrs": [("IFLA_ALT_IFNAME", "enp59s2f3"), ("IFLA_ALT_IFNAME", "x1")]},
        ),
        ("IFLA_PARENT_DEV_NAME", "0000:3b:02.3"),
        ("IFLA_PARENT_DEV_BUS_NAME", "pci"),
    ]
    msg["header"]["type"] = RTM_NEWLINK
    msg.encode()
    back = ifinfmsg(msg.data)
    back.decode()
    lean = lean_link(msg.data)
    assert lean == link_info(back)
    assert lean.altnames == ("enp59s2f3", "x1") and lean.parent_dev == "0000:3b:02.3"
    assert (lean.index, lean.up, lean.mtu, lean.max_mtu, lean.kind) == (
        42,
        True,
        9000,
        9702,
        "veth",
    )
