"""The Backend contract, run against both backends: SQLite and the CRD backend over the fake API."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsmgr.registry.errors import StoreError
from nsmgr.registry.kube import CrdBackend
from nsmgr.registry.model import Change, Endpoint, EndpointQuery, Service, ServiceQuery
from nsmgr.registry.store import SCHEMA_VERSION, Backend, SqliteBackend
from tests.nsmgr.registry.fake_kube import FakeCrds

NOW = 1_000_000.0


def ep(name: str, *services: str, expires: float = NOW + 60, **labels: dict[str, str]) -> Endpoint:
    return Endpoint(name, services, labels, f"tcp://10.0.0.1:{5000 + len(name)}", expires, NOW)


@pytest.fixture(params=["sqlite", "crd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b: Backend = (
        SqliteBackend(str(tmp_path / "r.db"))
        if request.param == "sqlite"
        else CrdBackend(FakeCrds())
    )
    try:
        yield b
    finally:
        b.close()


def test_services_upsert_find_delete(backend: Backend) -> None:
    backend.put_service(Service("b", "IP"))
    backend.put_service(Service("a", "ETHERNET", ({"fallthrough": True},)))
    backend.put_service(Service("b", "ETHERNET"))  # an upsert
    assert backend.find_services(ServiceQuery()) == [
        Service("a", "ETHERNET", ({"fallthrough": True},)),
        Service("b", "ETHERNET"),
    ]
    assert backend.find_services(ServiceQuery(name="b")) == [Service("b", "ETHERNET")]
    assert backend.find_services(ServiceQuery(name="c")) == []
    assert backend.delete_service("a") == Service("a", "ETHERNET", ({"fallthrough": True},))
    assert backend.delete_service("a") is None
    assert backend.counts(NOW) == (1, 0)


def test_endpoints_by_name_service_and_labels(backend: Backend) -> None:
    backend.put_endpoint(ep("nse-1", "svc-a", "svc-b", **{"svc-a": {"zone": "a"}}), NOW)
    backend.put_endpoint(ep("nse-2", "svc-a", **{"svc-a": {"zone": "b"}}), NOW)
    backend.put_endpoint(ep("nse-3", "svc-c"), NOW)

    def names(q: EndpointQuery) -> list[str]:
        return [e.name for e in backend.find_endpoints(q, NOW)]

    assert names(EndpointQuery()) == ["nse-1", "nse-2", "nse-3"]
    assert names(EndpointQuery(name="nse-2")) == ["nse-2"]
    assert names(EndpointQuery(network_service_names=("svc-a",))) == ["nse-1", "nse-2"]
    assert names(EndpointQuery(network_service_names=("svc-a", "svc-b"))) == ["nse-1"]
    labels = EndpointQuery(network_service_labels={"svc-a": {"zone": "b"}})
    assert names(labels) == ["nse-2"]
    assert names(EndpointQuery(network_service_names=("svc-x",))) == []
    got = backend.find_endpoints(EndpointQuery(name="nse-1"), NOW)[0]
    assert got == ep("nse-1", "svc-a", "svc-b", **{"svc-a": {"zone": "a"}})
    assert backend.counts(NOW) == (0, 3)


def test_a_changed_registration_moves_between_services(backend: Backend) -> None:
    backend.put_endpoint(ep("nse-1", "svc-a"), NOW)
    backend.put_endpoint(ep("nse-1", "svc-b"), NOW)
    assert backend.find_endpoints(EndpointQuery(network_service_names=("svc-a",)), NOW) == []
    [e] = backend.find_endpoints(EndpointQuery(network_service_names=("svc-b",)), NOW)
    assert e.network_service_names == ("svc-b",)


def test_refresh_keeps_first_registration_unless_it_had_expired(backend: Backend) -> None:
    first = backend.put_endpoint(ep("nse-1", "svc", expires=NOW + 10), NOW)
    assert first.registered == NOW
    later = Endpoint("nse-1", ("svc",), {}, "tcp://10.0.0.1:1", NOW + 30, registered=NOW + 5)
    assert backend.put_endpoint(later, NOW + 5).registered == NOW  # a refresh
    again = Endpoint("nse-1", ("svc",), {}, "tcp://10.0.0.1:1", NOW + 99, registered=NOW + 40)
    assert backend.put_endpoint(again, NOW + 40).registered == NOW + 40  # it had expired at +30


def test_expired_endpoints_are_not_found_and_are_swept(backend: Backend) -> None:
    backend.put_endpoint(ep("short", "svc", expires=NOW + 1), NOW)
    backend.put_endpoint(ep("long", "svc", expires=NOW + 100), NOW)
    assert backend.next_expiry() == NOW + 1
    later = NOW + 1  # expiry is inclusive: at its expiration_time an endpoint is gone
    assert [e.name for e in backend.find_endpoints(EndpointQuery(), later)] == ["long"]
    assert backend.counts(later) == (0, 1)
    changes: list[Change] = []
    backend.subscribe(changes.append)
    gone = backend.expire(later)
    assert [e.name for e in gone] == ["short"]
    assert [(c.record.name, c.deleted) for c in changes] == [("short", True)]
    assert backend.expire(later) == []
    assert backend.next_expiry() == NOW + 100


def test_watchers_hear_every_change_in_order(backend: Backend) -> None:
    changes: list[Change] = []
    broken: list[Change] = []

    def explode(c: Change) -> None:
        broken.append(c)
        raise RuntimeError("a broken watcher")

    unsubscribe = backend.subscribe(changes.append)
    backend.subscribe(explode)  # must not break the writes nor the other watcher
    backend.put_service(Service("svc"))
    backend.put_endpoint(ep("nse-1", "svc"), NOW)
    backend.put_endpoint(ep("nse-1", "svc", expires=NOW + 120), NOW)
    backend.delete_endpoint("nse-1")
    backend.delete_endpoint("nse-1")  # nothing: no change
    backend.delete_service("svc")
    unsubscribe()
    backend.put_service(Service("unheard"))
    seen = [(type(c.record).__name__, c.record.name, c.deleted) for c in changes]
    assert seen == [
        ("Service", "svc", False),
        ("Endpoint", "nse-1", False),
        ("Endpoint", "nse-1", False),
        ("Endpoint", "nse-1", True),
        ("Service", "svc", True),
    ]
    assert len(broken) == 6


# -- SQLite only ----------------------------------------------------------------------------------


def test_sqlite_state_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "r.db")  # the folder is made
    with_data = SqliteBackend(path)
    with_data.put_service(Service("svc", "ETHERNET"))
    with_data.put_endpoint(ep("nse-1", "svc"), NOW)
    with_data.close()
    again = SqliteBackend(path)
    try:
        assert again.schema_version() == SCHEMA_VERSION
        assert again.find_services(ServiceQuery()) == [Service("svc", "ETHERNET")]
        assert again.find_endpoints(EndpointQuery(network_service_names=("svc",)), NOW) == [
            ep("nse-1", "svc")
        ]
    finally:
        again.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    SqliteBackend(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        SqliteBackend(path)


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_bytes(b"not a database at all, just text\n" * 100)
    with pytest.raises(StoreError, match=r"not a usable registry store|cannot start a write"):
        SqliteBackend(str(path))
