"""Addresses for local services: lowest free first, stable per connection, gateways and DNS kept
free, restored from the journal after a restart."""

from __future__ import annotations

import pytest

from nsmgr.errors import EndpointError
from nsmgr.ipam import Ipam


def test_leases_lowest_free_and_keeps_them_per_connection() -> None:
    ipam = Ipam("s", "10.0.0.0/29", reserved=["10.0.0.1", "10.0.0.3"])
    assert ipam.lease("a") == "10.0.0.2/29"  # .0 network, .1 gateway
    assert ipam.lease("b") == "10.0.0.4/29"  # .3 DNS server
    assert ipam.lease("a") == "10.0.0.2/29"  # asked again: the same
    assert ipam.release("a") and not ipam.release("a")
    assert ipam.lease("c") == "10.0.0.2/29"  # freed: reused
    assert ipam.leases() == {"b": "10.0.0.4/29", "c": "10.0.0.2/29"}


def test_exhaustion_is_a_clear_error() -> None:
    ipam = Ipam("s", "10.0.0.0/30")  # two hosts
    ipam.lease("a")
    ipam.lease("b")
    with pytest.raises(
        EndpointError, match=r"service s: no free address in 10.0.0.0/30 \(2 leased\)"
    ):
        ipam.lease("c")


@pytest.mark.parametrize(
    ("subnet", "first", "count"),
    [
        ("10.0.0.0/31", "10.0.0.0/31", 2),  # RFC 3021: both are hosts
        ("fd00::/126", "fd00::1/126", 3),  # the Subnet-Router anycast is kept
        ("fd00::/127", "fd00::/127", 2),
    ],
)
def test_small_subnets(subnet: str, first: str, count: int) -> None:
    ipam = Ipam("s", subnet)
    assert ipam.lease("c0") == first
    for i in range(1, count):
        ipam.lease(f"c{i}")
    with pytest.raises(EndpointError):
        ipam.lease("one-too-many")


def test_restore_takes_back_recorded_leases() -> None:
    ipam = Ipam("s", "10.0.0.0/24", reserved=["10.0.0.1"])
    assert ipam.restore("a", "10.0.0.7/24")
    assert ipam.restore("a", "10.0.0.7/24")  # idempotent
    assert not ipam.restore("b", "10.0.0.7/24")  # held by a
    assert not ipam.restore("c", "10.0.1.7/24")  # outside the subnet (it changed)
    assert not ipam.restore("d", "10.0.0.1/24")  # a gateway now
    assert not ipam.restore("e", "garbage")
    assert ipam.lease("f") == "10.0.0.2/24"
    assert ipam.lease("a") == "10.0.0.7/24"
