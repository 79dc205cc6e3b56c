"""IPAM on a real store file: which addresses are skipped, leases idempotent per connection,
release and reuse, exhaustion naming service and subnet, IPv6, and leases surviving a restart."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from torshim.config import Service
from torshim.errors import AddressExhausted, ShimError
from torshim.ipam import Ipam, bounds, leasable, reserved
from torshim.store import Store


def service(subnet: str, name: str = "red", **kw: Any) -> Service:
    return Service(name=name, domain="example.com", vlan=100, subnet=subnet, namespaces=["*"], **kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "torshim.db"


@pytest.fixture
def ipam(db: Path) -> Iterator[Ipam]:
    with Store(str(db)) as store:
        yield Ipam(store)


@pytest.mark.parametrize(
    ("subnet", "first", "last"),
    [
        ("10.0.0.0/24", "10.0.0.1", "10.0.0.254"),
        ("10.0.0.0/30", "10.0.0.1", "10.0.0.2"),
        ("10.0.0.0/31", "10.0.0.0", "10.0.0.1"),  # RFC 3021: both are hosts
        ("2001:db8::/64", "2001:db8::1", "2001:db8::ffff:ffff:ffff:ff7f"),  # RFC 2526 top 128
        ("2001:db8::/126", "2001:db8::1", "2001:db8::3"),
        ("2001:db8::/127", "2001:db8::", "2001:db8::1"),  # RFC 6164
    ],
)
def test_bounds(subnet: str, first: str, last: str) -> None:
    span = bounds(ipaddress.ip_network(subnet))
    assert span == (int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last)))


def test_lease_skips_network_gateway_and_dns(ipam: Ipam) -> None:
    svc = service(
        "10.1.0.0/29",
        routes=[{"prefix": "0.0.0.0/0", "next_hop": "10.1.0.1"}, {"prefix": "10.9.0.0/16"}],
        dns={"servers": ["10.1.0.2", "8.8.8.8"]},
    )
    assert reserved(svc) == {ipaddress.ip_address("10.1.0.1"), ipaddress.ip_address("10.1.0.2")}
    got = [ipam.lease(svc, f"c{i}") for i in range(4)]
    assert [str(a) for a in got] == ["10.1.0.3/29", "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"]
    with pytest.raises(AddressExhausted) as e:
        ipam.lease(svc, "c4")
    assert "'red'" in str(e.value) and "10.1.0.0/29" in str(e.value)
    assert isinstance(e.value, ShimError)


def test_on_link_service_reserves_no_router(ipam: Ipam) -> None:
    svc = service("10.2.0.0/30")
    assert [str(ipam.lease(svc, c)) for c in ("a", "b")] == ["10.2.0.1/30", "10.2.0.2/30"]


def test_lease_is_idempotent_and_release_reuses(ipam: Ipam) -> None:
    svc = service("10.3.0.0/24")
    a = ipam.lease(svc, "c1")
    b = ipam.lease(svc, "c2")
    assert ipam.lease(svc, "c1") == a and a != b
    assert ipam.address(svc, "c1") == a
    assert len(ipam.leases(svc)) == 2
    assert ipam.release(svc, "c1") is True
    assert ipam.release("red", "c1") is False  # repeated Close
    assert ipam.address(svc, "c1") is None
    assert ipam.lease(svc, "c3") == a  # the lowest free address again


def test_services_have_separate_pools(ipam: Ipam) -> None:
    red, blue = service("10.4.0.0/24"), service("10.5.0.0/24", name="blue")
    assert str(ipam.lease(red, "c1")) == "10.4.0.1/24"
    assert str(ipam.lease(blue, "c1")) == "10.5.0.1/24"
    assert [lease.service for lease in ipam.leases()] == ["blue", "red"]


def test_ipv6(ipam: Ipam) -> None:
    svc = service("2001:db8:1::/64", routes=[{"prefix": "::/0", "next_hop": "2001:db8:1::1"}])
    got = [ipam.lease(svc, f"c{i}") for i in range(3)]
    assert [str(a) for a in got] == ["2001:db8:1::2/64", "2001:db8:1::3/64", "2001:db8:1::4/64"]
    small = service("2001:db8:2::/126", name="small")
    assert len({ipam.lease(small, f"s{i}") for i in range(3)}) == 3
    with pytest.raises(AddressExhausted, match="2001:db8:2::/126"):
        ipam.lease(small, "s3")


def test_changed_config_moves_an_invalid_lease(ipam: Ipam) -> None:
    old = service("10.6.0.0/24")
    assert str(ipam.lease(old, "c1")) == "10.6.0.1/24"
    # the operator declares 10.6.0.1 as the gateway: c1 must not keep the router's address
    new = service("10.6.0.0/24", routes=[{"prefix": "0.0.0.0/0", "next_hop": "10.6.0.1"}])
    assert not leasable(new, "10.6.0.1")
    assert str(ipam.lease(new, "c1")) == "10.6.0.2/24"
    moved = service("10.7.0.0/24")
    assert str(ipam.lease(moved, "c1")) == "10.7.0.1/24"
    assert len(ipam.leases("red")) == 1


def test_restart_keeps_leases(db: Path) -> None:
    svc = service("10.8.0.0/24")
    with Store(str(db)) as store:
        first = Ipam(store).lease(svc, "c1")
        Ipam(store).lease(svc, "c2")
    with Store(str(db)) as store:
        ipam = Ipam(store)
        assert ipam.lease(svc, "c1") == first
        assert str(ipam.lease(svc, "c3")) == "10.8.0.3/24"


def test_concurrent_leases_are_distinct(db: Path) -> None:
    svc = service("10.9.0.0/24")
    stores = [Store(str(db)) for _ in range(4)]
    got: list[tuple[str, str]] = []

    def work(k: int) -> None:
        ipam = Ipam(stores[k % 4])
        for i in range(k, 120, 8):
            got.append((f"c{i}", str(ipam.lease(svc, f"c{i}"))))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 120 and len({addr for _, addr in got}) == 120
    assert len(Ipam(stores[0]).leases(svc)) == 120
    for s in stores:
        s.close()
