"""The CLI drivers' pure side: golden renders for every flavour (cisco_ios, cisco_nxos,
arista_eos, juniper_junos, linux, cumulus_linux) and injection refused before any session opens."""

from __future__ import annotations

from typing import Any

import pytest

from tests.torshim.cli_helpers import CASES, CLI_DRIVERS, PORT, SW, A, T, make
from torshim.drivers.base import driver_class
from torshim.drivers.cli_session import CliDriver
from torshim.drivers.switchport import vlan_ranges
from torshim.errors import UnsupportedError, ValidationError
from torshim.model import Changeset, PortChange, PortConfig

# -- golden renders --------------------------------------------------------------------------------


def ios_style(port: str, ind: str) -> dict[str, list[str]]:
    i = f"interface {port}"
    return {
        "trunk_add": [i, f"{ind}switchport trunk allowed vlan add 200-202"],
        "trunk_remove": [i, f"{ind}switchport trunk allowed vlan remove 100,300"],
        "trunk_to_access": [
            i,
            f"{ind}switchport access vlan 300",
            f"{ind}switchport mode access",
            f"{ind}no switchport trunk allowed vlan",
        ],
        "native": [i, f"{ind}switchport trunk native vlan 10"],
        "access_to_trunk": [
            i,
            f"{ind}switchport trunk allowed vlan 200,300",
            f"{ind}no switchport trunk native vlan",
            f"{ind}switchport mode trunk",
            f"{ind}no switchport access vlan",
        ],
        "access_move": [i, f"{ind}switchport access vlan 200"],
        "access_release": [i, f"{ind}no switchport access vlan"],
    }


NV_ON = "nv set interface swp1 bridge domain br_default"
NV_OFF = "nv unset interface swp1 bridge domain br_default"


def br(v: int) -> str:
    return f"ip link show dev br-v{v} >/dev/null 2>&1 || ip link add name br-v{v} up type bridge"


def sub_add(v: int) -> list[str]:
    return [
        br(v),
        f"ip link add link swp1 name swp1.{v} type vlan id {v}",
        f"ip link set dev swp1.{v} master br-v{v} up",
    ]


GOLDEN: dict[str, dict[str, list[str]]] = {
    "cisco_ios": ios_style("GigabitEthernet0/1", " "),
    "cisco_nxos": ios_style("Ethernet1/1", "  "),
    "arista_eos": ios_style("Ethernet1", "   "),
    "juniper_junos": {
        "trunk_add": [f"set {SW} vlan members {v}" for v in (200, 201, 202)],
        "trunk_remove": [f"delete {SW} vlan members 100", f"delete {SW} vlan members 300"],
        "trunk_to_access": [
            f"set {SW} interface-mode access",
            f"delete {SW} vlan members 100",
            f"delete {SW} vlan members 200",
            f"set {SW} vlan members 300",
        ],
        "native": ["set interfaces xe-0/0/1 native-vlan-id 10"],
        "access_to_trunk": [
            f"set {SW} interface-mode trunk",
            f"delete {SW} vlan members 100",
            f"set {SW} vlan members 200",
            f"set {SW} vlan members 300",
        ],
        "access_move": [f"delete {SW} vlan members 100", f"set {SW} vlan members 200"],
        "access_release": [f"delete {SW} vlan members 100"],
    },
    "linux": {
        "trunk_add": sub_add(200) + sub_add(201) + sub_add(202),
        "trunk_remove": ["ip link del dev swp1.100", "ip link del dev swp1.300"],
        "trunk_to_access": [
            "ip link del dev swp1.100",
            "ip link del dev swp1.200",
            br(300),
            "ip link set dev swp1 master br-v300",
        ],
        "native": [br(10), "ip link set dev swp1 master br-v10"],
        "access_to_trunk": [*sub_add(200), *sub_add(300), "ip link set dev swp1 nomaster"],
        "access_move": [br(200), "ip link set dev swp1 master br-v200"],
        "access_release": ["ip link set dev swp1 nomaster"],
    },
    "cumulus_linux": {
        "trunk_add": ["nv set bridge domain br_default vlan 200-202", f"{NV_ON} vlan 200-202"],
        "trunk_remove": [f"{NV_OFF} vlan 100,300"],
        "trunk_to_access": [
            "nv set bridge domain br_default vlan 300",
            f"{NV_ON} access 300",
            f"{NV_OFF} vlan",
        ],
        "native": ["nv set bridge domain br_default vlan 10", f"{NV_ON} untagged 10"],
        "access_to_trunk": [
            "nv set bridge domain br_default vlan 200,300",
            f"{NV_ON} vlan 200,300",
            f"{NV_OFF} access",
        ],
        "access_move": ["nv set bridge domain br_default vlan 200", f"{NV_ON} access 200"],
        "access_release": [NV_OFF],
    },
}


@pytest.mark.parametrize("driver", CLI_DRIVERS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_render(driver: str, case: str) -> None:
    before, after = CASES[case](PORT[driver])
    cs = make(driver).render([PortChange(before, after)])
    assert list(cs.lines) == GOLDEN[driver][case]
    assert cs.driver == driver and not cs.xml
    assert cs.text() == "\n".join(GOLDEN[driver][case])


@pytest.mark.parametrize("driver", CLI_DRIVERS)
def test_empty_change_renders_nothing(driver: str) -> None:
    d = make(driver)
    assert d.render([]).empty
    same = A(PORT[driver], 100)
    assert d.render([PortChange(same, same)]).empty
    d.apply(d.render([]))  # nothing to send: no session is opened (no_connect would fail)


@pytest.mark.parametrize("driver", CLI_DRIVERS)
def test_every_cli_driver_is_registered_with_its_device_type(driver: str) -> None:
    cls = driver_class(driver)
    assert issubclass(cls, CliDriver) and cls.transport == "cli" and cls.name == driver
    assert cls.device_type == driver  # netmiko's name for the same flavour
    assert {"trunk", "access"} <= cls.capabilities


def test_render_two_ports_keeps_order_and_makes_each_bridge_once() -> None:
    changes = [
        PortChange(PortConfig("swp1"), A("swp1", 100)),
        PortChange(PortConfig("swp2"), A("swp2", 100)),
    ]
    assert list(make("linux").render(changes).lines) == [
        br(100),
        "ip link set dev swp1 master br-v100",
        "ip link set dev swp2 master br-v100",
    ]
    bare = make("linux", options={"create_bridges": False, "bridge_prefix": "vlan"})
    assert list(bare.render(changes[:1]).lines) == ["ip link set dev swp1 master vlan100"]


def test_cumulus_trunk_losing_its_last_vlan_leaves_the_bridge() -> None:
    # An empty `vlan` list would mean "all the bridge's VLANs" in NVUE.
    d = make("cumulus_linux", options={"bridge_domain": "br1"})
    cs = d.render([PortChange(T("swp1", {100}), T("swp1", set()))])
    assert list(cs.lines) == ["nv unset interface swp1 bridge domain br1"]
    with pytest.raises(UnsupportedError):
        d.render([PortChange(T("swp1", {100}), T("swp1", set(), native=10))])


def test_vlan_ranges() -> None:
    assert vlan_ranges({1, 2, 3, 5, 7, 8, 4094}) == "1-3,5,7-8,4094"
    assert vlan_ranges([]) == ""
    with pytest.raises(ValidationError):
        vlan_ranges([0])


# -- injection: refused before any session -------------------------------------------------------


def forged(port: str, mode: str | None = "access", vlan: object = 100) -> PortConfig:
    """A PortConfig that skipped __post_init__, as a bug elsewhere could make one."""
    cfg = object.__new__(PortConfig)
    for k, v in {
        "port": port,
        "mode": mode,
        "access_vlan": vlan,
        "native_vlan": None,
        "trunk_vlans": frozenset(),
    }.items():
        object.__setattr__(cfg, k, v)
    return cfg


BAD_PORTS = ["Ethernet1/1\nreload", "swp1 && reboot", "swp1;reboot", "-swp1", 'xe-0/0/1"', ""]
BAD_VLANS = ["100; rm -rf /", "100\nreload", 0, 4095, True, "1e2"]


@pytest.mark.parametrize("bad", BAD_PORTS)
def test_bad_port_is_refused_by_the_model(bad: str) -> None:
    with pytest.raises(ValidationError):
        PortConfig(bad)


@pytest.mark.parametrize("driver", CLI_DRIVERS)
@pytest.mark.parametrize("bad", BAD_PORTS)
def test_render_revalidates_ports(driver: str, bad: str) -> None:
    with pytest.raises(ValidationError):
        make(driver).render([PortChange(forged(bad, None, None), forged(bad))])


@pytest.mark.parametrize("driver", CLI_DRIVERS)
@pytest.mark.parametrize("bad", BAD_VLANS)
def test_render_revalidates_vlans(driver: str, bad: object) -> None:
    port = PORT[driver]
    with pytest.raises(ValidationError):
        make(driver).render([PortChange(PortConfig(port), forged(port, "access", bad))])


@pytest.mark.parametrize("driver", CLI_DRIVERS)
@pytest.mark.parametrize("bad", BAD_PORTS)
def test_read_and_converge_refuse_bad_ports_before_connecting(driver: str, bad: str) -> None:
    d = make(driver)
    with pytest.raises(ValidationError):
        d.read([bad])
    with pytest.raises(ValidationError):
        d.converge({bad: forged(bad)})


@pytest.mark.parametrize("driver", CLI_DRIVERS)
def test_apply_refuses_a_forged_changeset(driver: str) -> None:
    d = make(driver)
    good = d.render([PortChange(*CASES["access_move"](PORT[driver]))])
    evil = Changeset(driver, good.changes, (*good.lines, "reload"))
    with pytest.raises(ValidationError):
        d.apply(evil)
    with pytest.raises(UnsupportedError):
        d.apply(Changeset("other", good.changes, good.lines))


@pytest.mark.parametrize(
    ("driver", "port"),
    [
        ("cumulus_linux", "swp1-4"),  # an NVUE range: would configure four ports
        ("cumulus_linux", "swp1,swp2"),
        ("linux", "Ethernet1/1"),  # `/` is not in Linux interface names
        ("linux", "averyveryverylongname"),
    ],
)
def test_flavour_specific_port_names(driver: str, port: str) -> None:
    with pytest.raises(ValidationError):
        make(driver).read([port])


def test_linux_subport_name_must_fit_ifnamsiz() -> None:
    with pytest.raises(ValidationError):
        make("linux").render([PortChange(PortConfig("swp123456789ab"), T("swp123456789ab", {100}))])


@pytest.mark.parametrize(
    ("driver", "options"),
    [
        ("linux", {"bridge_prefix": "br;x"}),
        ("linux", {"bridge_prefix": "a" * 12}),
        ("cumulus_linux", {"bridge_domain": "br_default && reboot"}),
    ],
)
def test_options_reaching_a_line_are_validated(driver: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make(driver, options=options).render([PortChange(*CASES["access_move"](PORT[driver]))])


def test_linux_lines_are_batched_under_the_pty_limit() -> None:
    from torshim.drivers.linux import batch

    lines = [f"ip link set dev swp{i} master br-v100" for i in range(100)]
    joined = batch(lines, 400)
    assert " && ".join(joined) == " && ".join(lines)  # same commands, same order
    assert all(len(j) <= 400 for j in joined) and len(joined) < 20
    assert batch(["x" * 500, "y"], 400) == ["x" * 500, "y"]  # a long line stays whole
