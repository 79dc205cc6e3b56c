"""A port's desired config from its connections, on data alone."""

from __future__ import annotations

import pytest

from torshim.errors import ConflictError, StoreError
from torshim.model import PortConfig
from torshim.ports import check_joinable, desired_config, leftovers, released
from torshim.store import Connection

VLANS = {"red": 100, "blue": 200}


def conn(cid: str, service: str, mode: str = "trunk", port: str = "Ethernet1/1") -> Connection:
    return Connection(
        cid, service, "tor1", port, "node-a", "ens1f0", "0000:3b:02.0", "ns", mode=mode
    )


def test_vfs_make_a_trunk_of_their_services_vlans() -> None:
    conns = [conn("a", "red"), conn("b", "red"), conn("c", "blue")]
    assert desired_config("Ethernet1/1", conns, VLANS) == PortConfig.trunk(
        "Ethernet1/1", {100, 200}
    )


def test_no_connection_is_released_to_an_empty_trunk_or_the_parking_vlan() -> None:
    assert desired_config("Ethernet1/1", [], VLANS) == PortConfig.trunk("Ethernet1/1", set())
    assert desired_config("Ethernet1/1", [], VLANS, 999) == PortConfig.access("Ethernet1/1", 999)
    assert released("Ethernet1/2", None).trunk_vlans == frozenset()


def test_whole_port_attachment_is_access() -> None:
    got = desired_config("Ethernet1/1", [conn("a", "blue", "access")], VLANS)
    assert got == PortConfig.access("Ethernet1/1", 200)


def test_a_service_gone_from_the_config_is_an_error_not_a_dropped_vlan() -> None:
    with pytest.raises(StoreError, match="green"):
        desired_config("Ethernet1/1", [conn("a", "green")], VLANS)


@pytest.mark.parametrize(
    ("new", "other", "ok"),
    [
        (conn("n", "red"), conn("o", "blue"), True),  # VFs of two services share a trunk
        (conn("n", "red", "access"), conn("o", "blue"), False),  # whole port over a VF
        (conn("n", "red"), conn("o", "blue", "access"), False),  # VF over a whole port
        (conn("n", "red", "access"), conn("o", "red"), False),  # modes cannot mix
        (conn("n", "red", "access"), conn("o", "red", "access"), True),
        (conn("n", "red"), conn("n", "blue", "access"), True),  # itself (a refresh) never conflicts
    ],
)
def test_joinable(new: Connection, other: Connection, ok: bool) -> None:
    if ok:
        check_joinable(new, [other])
    else:
        with pytest.raises(ConflictError):
            check_joinable(new, [other])


def test_leftovers_are_service_vlans_only() -> None:
    port = PortConfig.trunk("Ethernet1/1", {100, 300}, native=200)
    assert leftovers(port, [100, 200]) == {100, 200}
    assert leftovers(PortConfig.access("Ethernet1/1", 1), [100]) == frozenset()
    assert leftovers(None, [100]) == frozenset()
