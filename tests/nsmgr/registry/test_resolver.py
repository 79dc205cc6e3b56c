"""Finding a domain's registry: RFC 2782 order, TTL cache, retries with backoff, stale answers;
then the real thing against dnsmasq on loopback."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nsmgr.registry.errors import NotFound, ResolveError
from nsmgr.registry.resolver import (
    DnsFailure,
    NoData,
    NoSuchName,
    Resolver,
    Srv,
    Target,
    order_srv,
    parse_nameserver,
)
from tests.nsmgr.registry.helpers import dnsmasq, needs_dnsmasq


def srv(priority: int, weight: int, port: int, target: str) -> SimpleNamespace:
    return SimpleNamespace(priority=priority, weight=weight, port=port, target=target + ".")


def a(address: str) -> SimpleNamespace:
    return SimpleNamespace(address=address)


class FakeDns:
    """Answers from a table; `fail[(name, type)] = n` fails the next n questions."""

    def __init__(self, table: dict[tuple[str, str], Any], ttl: int = 30) -> None:
        self.table, self.ttl = table, ttl
        self.asked: list[tuple[str, str]] = []
        self.fail: dict[tuple[str, str], int] = {}

    def __call__(self, name: str, rdtype: str) -> tuple[list[Any], int]:
        self.asked.append((name, rdtype))
        if self.fail.get((name, rdtype), 0) > 0:
            self.fail[(name, rdtype)] -= 1
            raise DnsFailure("timed out")
        answer = self.table.get((name, rdtype))
        if answer is None:
            raise NoSuchName(name)
        if answer == []:
            raise NoData(name)
        return answer, self.ttl


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def make(dns: FakeDns, clock: Clock, **kw: Any) -> Resolver:
    return Resolver(query=dns, clock=clock, sleep=clock.sleep, rng=random.Random(7), **kw)


REMOTE = {
    ("_nsregistry._tcp.remote.test.", "SRV"): [srv(10, 0, 5002, "reg.remote.test")],
    ("reg.remote.test.", "A"): [a("127.0.0.2")],
    ("reg.remote.test.", "AAAA"): [a("::1")],
}


# -- RFC 2782 order -------------------------------------------------------------------------------


def test_lower_priority_always_comes_first() -> None:
    records = [Srv(20, 100, 1, "c"), Srv(10, 0, 1, "a"), Srv(10, 0, 1, "b"), Srv(30, 5, 1, "d")]
    for seed in range(50):
        order = [s.target for s in order_srv(records, random.Random(seed))]
        assert set(order[:2]) == {"a", "b"} and order[2:] == ["c", "d"]


def test_weights_share_first_place_in_proportion() -> None:
    records = [Srv(10, 60, 1, "heavy"), Srv(10, 30, 1, "light"), Srv(10, 10, 1, "rare")]
    rng = random.Random(1)
    first = Counter(order_srv(records, rng)[0].target for _ in range(6000))
    assert 0.55 < first["heavy"] / 6000 < 0.65
    assert 0.25 < first["light"] / 6000 < 0.35
    assert 0.07 < first["rare"] / 6000 < 0.13


def test_zero_weight_is_rarely_first_among_weighted_ones() -> None:
    records = [Srv(10, 0, 1, "zero"), Srv(10, 100, 1, "weighted")]
    rng = random.Random(2)
    first = Counter(order_srv(records, rng)[0].target for _ in range(2000))
    assert first["zero"] < 60  # only when the draw is exactly 0: about 1 in 101
    assert all(len(order_srv(records, rng)) == 2 for _ in range(10))


# -- targets, cache, failures ---------------------------------------------------------------------


def test_targets_in_order_with_their_addresses() -> None:
    table = {
        ("_nsregistry._tcp.remote.test.", "SRV"): [
            srv(20, 0, 6000, "backup.remote.test"),
            srv(10, 0, 5002, "reg.remote.test"),
            srv(15, 0, 5003, "10.1.2.3"),  # an IP literal as target is taken as is
        ],
        ("reg.remote.test.", "A"): [a("127.0.0.2")],
        ("reg.remote.test.", "AAAA"): [a("fd00::2")],
        ("backup.remote.test.", "A"): [],  # no address: left out
    }
    r = make(FakeDns(table), Clock())
    assert r.registry_targets("remote.test") == [
        Target("127.0.0.2", 5002, "reg.remote.test"),
        Target("fd00::2", 5002, "reg.remote.test"),
        Target("10.1.2.3", 5003, "10.1.2.3"),
    ]
    assert Target("fd00::2", 5002, "x").address == "[fd00::2]:5002"


def test_answers_are_cached_for_their_ttl_clamped() -> None:
    dns, clock = FakeDns(REMOTE, ttl=30), Clock()
    r = make(dns, clock, min_ttl=1, max_ttl=20)
    r.registry_targets("remote.test")
    asked = len(dns.asked)
    clock.now += 19
    r.registry_targets("remote.test")
    assert len(dns.asked) == asked  # warm: no question asked
    clock.now += 2  # past max_ttl (20), though the record said 30
    r.registry_targets("remote.test")
    assert len(dns.asked) == 2 * asked


def test_a_zero_ttl_is_held_for_min_ttl() -> None:
    dns, clock = FakeDns(REMOTE, ttl=0), Clock()
    r = make(dns, clock, min_ttl=5)
    r.srv("remote.test")
    clock.now += 4
    r.srv("remote.test")
    assert dns.asked.count(("_nsregistry._tcp.remote.test.", "SRV")) == 1


def test_no_such_domain_is_not_found_and_cached_negatively() -> None:
    dns, clock = FakeDns({}), Clock()
    r = make(dns, clock, negative_ttl=5)
    with pytest.raises(
        NotFound,
        match=r"domain 'nope.test' has no registry: no DNS SRV record "
        r"_nsregistry._tcp.nope.test",
    ):
        r.registry_targets("nope.test")
    with pytest.raises(NotFound):
        r.registry_targets("nope.test")
    assert len(dns.asked) == 1
    clock.now += 6
    with pytest.raises(NotFound):
        r.registry_targets("nope.test")
    assert len(dns.asked) == 2


def test_srv_target_dot_means_no_registry() -> None:
    table = {
        ("_nsregistry._tcp.off.test.", "SRV"): [
            SimpleNamespace(priority=0, weight=0, port=0, target=".")
        ]
    }
    with pytest.raises(NotFound, match="says it has no registry"):
        make(FakeDns(table), Clock()).registry_targets("off.test")


def test_failures_are_retried_with_growing_backoff() -> None:
    dns, clock = FakeDns(REMOTE), Clock()
    dns.fail[("_nsregistry._tcp.remote.test.", "SRV")] = 2
    r = make(dns, clock, attempts=3, backoff=0.1)
    assert r.registry_targets("remote.test")[0].port == 5002
    assert clock.slept == pytest.approx([0.1, 0.2])


def test_failing_dns_gives_up_after_the_attempts() -> None:
    dns, clock = FakeDns(REMOTE), Clock()
    dns.fail[("_nsregistry._tcp.remote.test.", "SRV")] = 99
    r = make(dns, clock, attempts=3, backoff=0.1)
    with pytest.raises(
        ResolveError,
        match=r"DNS SRV _nsregistry._tcp.remote.test.: timed out "
        r"\(after 3 attempts\)",
    ):
        r.registry_targets("remote.test")
    assert len(dns.asked) == 3


def test_a_stale_answer_is_used_while_dns_fails() -> None:
    dns, clock = FakeDns(REMOTE, ttl=10), Clock()
    r = make(dns, clock, attempts=2, backoff=0.0, serve_stale=60)
    first = r.registry_targets("remote.test")
    for key in list(REMOTE):
        dns.fail[key] = 99
    clock.now += 30  # expired 20 s ago: still within serve_stale
    assert r.registry_targets("remote.test") == first
    clock.now += 60  # too old now
    with pytest.raises(ResolveError):
        r.registry_targets("remote.test")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
    ],
)
def test_nameserver_forms(text: str, want: tuple[str, int]) -> None:
    assert parse_nameserver(text) == want


@pytest.mark.parametrize("text", ["dns.example.com", "127.0.0.1:0", "127.0.0.1:x", "[::1"])
def test_bad_nameservers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


# -- against dnsmasq ------------------------------------------------------------------------------


@needs_dnsmasq
def test_srv_then_address_from_a_real_dns_server(tmp_path: Path) -> None:
    records = [
        "srv-host=_nsregistry._tcp.remote.test,reg1.remote.test,5002,10,90",
        "srv-host=_nsregistry._tcp.remote.test,reg2.remote.test,5003,10,10",
        "srv-host=_nsregistry._tcp.remote.test,backup.remote.test,6000,20,0",
        "host-record=reg1.remote.test,127.0.0.2",
        "host-record=reg2.remote.test,127.0.0.3,::1",
        "host-record=backup.remote.test,127.0.0.4",
    ]
    with dnsmasq(records, str(tmp_path)) as dns:
        looked: list[str] = []
        r = Resolver(nameservers=[dns.nameserver], timeout=1.0, on_lookup=looked.append)
        firsts: Counter[str] = Counter()
        for _ in range(200):
            targets = r.registry_targets("remote.test")
            firsts[targets[0].name] += 1
            assert targets[-1] == Target("127.0.0.4", 6000, "backup.remote.test")
            assert {t.address for t in targets} == {
                "127.0.0.2:5002",
                "127.0.0.3:5003",
                "[::1]:5003",
                "127.0.0.4:6000",
            }
        assert firsts["reg1.remote.test"] > 140  # weight 90 of 100
        questions = len(dns.queries())
        assert questions == 7  # SRV once, A and AAAA of 3 targets once: then the cache
        assert looked.count("miss") == 5 and looked.count("negative") == 2
        with pytest.raises(NotFound, match=r"no DNS SRV record _nsregistry\._tcp\.nope\.test"):
            r.registry_targets("nope.test")


@needs_dnsmasq
def test_an_unanswering_server_is_retried_then_resolve_error(tmp_path: Path) -> None:
    import socket

    with socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as silent:  # takes questions, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        slept: list[float] = []
        sleep: Callable[[float], None] = slept.append
        r = Resolver(nameservers=[f"127.0.0.1:{port}"], timeout=0.1, attempts=3, sleep=sleep)
        with pytest.raises(ResolveError, match="after 3 attempts"):
            r.srv("remote.test")
        assert slept == pytest.approx([0.1, 0.2])
