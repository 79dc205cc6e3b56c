"""The CLI drivers' parsers, on show output recorded in the vendors' documented formats."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.torshim.cli_helpers import A, T, make
from torshim.drivers import arista_eos as eos
from torshim.drivers import cisco_ios, cisco_nxos, cumulus_linux, juniper_junos, linux
from torshim.drivers.cli_session import split_rc, with_rc
from torshim.drivers.switchport import ALL_VLANS
from torshim.errors import CommandRejected
from torshim.model import PortConfig

# -- parsers on recorded show output ---------------------------------------------------------------

IOS_TRUNK = """\
Building configuration...

Current configuration : 187 bytes
!
interface GigabitEthernet0/1
 description to node-a ens1f0
 switchport trunk native vlan 10
 switchport trunk allowed vlan 100,200-202
 switchport trunk allowed vlan add 300
 switchport mode trunk
 spanning-tree portfast trunk
end
"""
IOS_ACCESS = """\
Building configuration...

Current configuration : 96 bytes
!
interface GigabitEthernet0/2
 switchport access vlan 100
 switchport mode access
end
"""
IOS_TRUNK_ALL = "!\ninterface GigabitEthernet0/3\n switchport mode trunk\nend\n"
IOS_TRUNK_NONE = """\
!
interface GigabitEthernet0/4
 switchport trunk allowed vlan none
 switchport mode trunk
end
"""
IOS_DYNAMIC = "!\ninterface GigabitEthernet0/5\n switchport access vlan 100\nend\n"
IOS_INVALID = """\
show running-config interface GigabitEthernet0/99
                                              ^
% Invalid input detected at '^' marker.
"""


def test_parse_ios() -> None:
    p = cisco_ios.parse_running_interface
    assert p("GigabitEthernet0/1", IOS_TRUNK) == T(
        "GigabitEthernet0/1", {100, 200, 201, 202, 300}, 10
    )
    assert p("GigabitEthernet0/2", IOS_ACCESS) == A("GigabitEthernet0/2", 100)
    assert p("GigabitEthernet0/3", IOS_TRUNK_ALL).trunk_vlans == ALL_VLANS
    assert p("GigabitEthernet0/4", IOS_TRUNK_NONE) == T("GigabitEthernet0/4", set())
    assert p("GigabitEthernet0/5", IOS_DYNAMIC) == PortConfig(
        "GigabitEthernet0/5"
    )  # DTP: unmanaged
    with pytest.raises(CommandRejected):
        p("GigabitEthernet0/1", IOS_ACCESS)  # the answer is about another port
    session = make("cisco_ios").session
    assert session.rejected(IOS_INVALID) == "% Invalid input detected at '^' marker."
    assert session.rejected(IOS_TRUNK) is None
    # informational, not an error: IOS creates the VLAN
    assert session.rejected("% Access VLAN does not exist. Creating vlan 300") is None


NXOS_TRUNK = """\
!Command: show running-config interface Ethernet1/1
!Running configuration last done at: Tue Mar  5 10:12:01 2024
!Time: Tue Mar  5 10:14:22 2024

version 9.3(8) Bios:version 05.45

interface Ethernet1/1
  description to node-a
  switchport mode trunk
  switchport trunk native vlan 10
  switchport trunk allowed vlan 100,200-202
  switchport trunk allowed vlan add 300-301
  no shutdown

"""
NXOS_ACCESS = """\
!Command: show running-config interface Ethernet1/2
!Time: Tue Mar  5 10:14:22 2024

version 9.3(8) Bios:version 05.45

interface Ethernet1/2
  switchport access vlan 100

"""


def test_parse_nxos() -> None:
    p = cisco_nxos.parse_running_interface
    assert p("Ethernet1/1", NXOS_TRUNK) == T("Ethernet1/1", {100, 200, 201, 202, 300, 301}, 10)
    assert p("Ethernet1/2", NXOS_ACCESS) == A("Ethernet1/2", 100)  # no mode line: access
    s = make("cisco_nxos").session
    assert s.rejected("                 ^\n% Invalid command at '^' marker.") is not None
    assert s.rejected("ERROR: Ethernet1/1: requested config change not allowed") is not None


EOS_TRUNK = """\
interface Ethernet1
   description to node-a
   switchport trunk native vlan 10
   switchport trunk allowed vlan 100,200-202
   switchport mode trunk
"""


def test_parse_eos() -> None:
    p = eos.parse_running_interface
    assert p("Ethernet1", EOS_TRUNK) == T("Ethernet1", {100, 200, 201, 202}, 10)
    assert p("Ethernet2", "interface Ethernet2\n") == A("Ethernet2", None)
    assert (
        p("Ethernet3", "interface Ethernet3\n   switchport mode trunk\n").trunk_vlans == ALL_VLANS
    )
    s = make("arista_eos").session
    assert s.rejected("% Invalid input (at token 1: 'Ethernet99')") is not None


JUNOS_IF = """\
set interfaces xe-0/0/1 description "to node-a"
set interfaces xe-0/0/1 native-vlan-id 10
set interfaces xe-0/0/1 unit 0 family ethernet-switching interface-mode trunk
set interfaces xe-0/0/1 unit 0 family ethernet-switching vlan members 100
set interfaces xe-0/0/1 unit 0 family ethernet-switching vlan members 200-202
set interfaces xe-0/0/1 unit 0 family ethernet-switching vlan members v300
set interfaces xe-0/0/10 unit 0 family ethernet-switching vlan members 999
"""
JUNOS_VLANS = """\
set vlans default vlan-id 1
set vlans v100 description "service a"
set vlans v100 vlan-id 100
set vlans v300 vlan-id 300
"""


def test_parse_junos() -> None:
    names = juniper_junos.parse_vlan_names(JUNOS_VLANS)
    assert names == {"default": 1, "v100": 100, "v300": 300}
    p = juniper_junos.parse_display_set
    assert p("xe-0/0/1", JUNOS_IF, names) == T("xe-0/0/1", {100, 200, 201, 202, 300}, 10)
    assert p("xe-0/0/10", JUNOS_IF, names) == A("xe-0/0/10", 999)  # no interface-mode: access
    assert p("xe-0/0/2", JUNOS_IF, names) == PortConfig("xe-0/0/2")
    with pytest.raises(CommandRejected):
        p("xe-0/0/1", JUNOS_IF, {})  # v300 unknown
    s = make("juniper_junos").session
    assert s.rejected("                                       ^\nsyntax error.") == "syntax error."
    assert s.rejected("warning: statement not found") is None


NVUE = """\
nv set bridge domain br_default vlan 10,100,200-202
nv set interface swp1-3,swp49 bridge domain br_default
nv set interface swp1 bridge domain br_default vlan 100,200-202
nv set interface swp1 bridge domain br_default untagged 10
nv set interface swp2 bridge domain br_default access 100
nv set interface swp1-3,swp49 link state up
nv set interface swp10 bridge domain br_default vlan 300
"""


def test_parse_nvue() -> None:
    p = cumulus_linux.parse_commands
    assert p("swp1", NVUE, "br_default") == T("swp1", {100, 200, 201, 202}, 10)
    assert p("swp2", NVUE, "br_default") == A("swp2", 100)
    every = {10, 100, 200, 201, 202}  # a member without a vlan list carries the bridge's VLANs
    assert p("swp3", NVUE, "br_default") == T("swp3", every)
    assert p("swp49", NVUE, "br_default") == T("swp49", every)
    assert p("swp10", NVUE, "br_default") == T("swp10", {300})
    assert p("swp4", NVUE, "br_default") == PortConfig("swp4")
    assert p("swp1", NVUE, "br1") == PortConfig("swp1")
    assert cumulus_linux.expand_interfaces("swp1-3,swp1s0-1,bond0") == [
        "swp1",
        "swp2",
        "swp3",
        "swp1s0",
        "swp1s1",
        "bond0",
    ]
    s = make("cumulus_linux").session
    assert s.rejected("Error: Invalid config [rev_id: 3]\nrc=1") is not None


def _link(name: str, **kw: Any) -> dict[str, Any]:
    return {"ifindex": 1, "ifname": name, "flags": ["UP"], "mtu": 1500, **kw}


# Shape of `ip -j -d link show` (iproute2 6.1), trimmed; the vlan entry follows the same format
# (linkinfo.info_kind "vlan", info_data.id, "link": parent) as the kernel prints it.
LINUX_LINKS = json.dumps(
    [
        _link("lo", link_type="loopback"),
        _link("swp1", master="br-v100", link_netnsid=0, linkinfo={"info_kind": "veth"}),
        _link("swp2", link_netnsid=0, linkinfo={"info_kind": "veth"}),
        _link("swp3", master="br-v10", linkinfo={"info_kind": "veth"}),
        _link(
            "swp3.200",
            link="swp3",
            master="br-v200",
            linkinfo={"info_kind": "vlan", "info_data": {"protocol": "802.1Q", "id": 200}},
        ),
        _link(
            "swp2.300",
            link="swp2",
            master="other",
            linkinfo={"info_kind": "vlan", "info_data": {"protocol": "802.1Q", "id": 300}},
        ),
        _link("swp4", master="docker0"),
        _link("br-v100", linkinfo={"info_kind": "bridge", "info_data": {"vlan_filtering": 0}}),
    ]
)


def test_parse_linux_links() -> None:
    out = linux.parse_links(LINUX_LINKS, ["swp1", "swp2", "swp3", "swp4"], linux.Layout())
    assert out == {
        "swp1": A("swp1", 100),
        "swp2": PortConfig("swp2"),  # its sub-port is in a bridge that is not ours
        "swp3": T("swp3", {200}, native=10),
        "swp4": PortConfig("swp4"),
    }
    with pytest.raises(CommandRejected, match="no port swp9"):
        linux.parse_links(LINUX_LINKS, ["swp9"], linux.Layout())
    with pytest.raises(CommandRejected):
        linux.parse_links("Cannot open netlink socket", ["swp1"], linux.Layout())


def test_rc_helpers() -> None:
    assert with_rc("ip link set dev swp1 nomaster") == "ip link set dev swp1 nomaster; echo rc=$?"
    assert split_rc('[{"ifname": "lo"}]\nrc=0') == ('[{"ifname": "lo"}]', 0)
    assert split_rc("Cannot find device\nrc=1\n") == ("Cannot find device", 1)
    assert split_rc("no marker") == ("no marker", -1)
    s = make("linux").session
    assert s.rejected('Cannot find device "swp9"\nrc=1') == "rc=1"
    assert s.rejected("ip link set dev swp1 master br-v1; echo rc=$?\nrc=0") is None
