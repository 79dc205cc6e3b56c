"""The state store on real SQLite files: reference-count edges, idempotency, what survives a reopen,
and no lost updates when threads (or two stores on one file) write at once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from torshim.errors import StoreError
from torshim.model import PortConfig
from torshim.ports import desired_config
from torshim.store import SCHEMA_VERSION, Connection, Store

VLANS = {"red": 100, "blue": 200, "green": 300}


def conn(cid: str, service: str = "red", port: str = "Ethernet1/1", **kw: str) -> Connection:
    fields = {"switch": "tor-a", "node": "node-a", "pf": "ens1f0", "namespace": "ns1"}
    fields.update(kw)
    return Connection(
        cid, service, fields["switch"], port, fields["node"], fields["pf"],
        f"0000:3b:02.{len(cid) % 8}", fields["namespace"],
    )  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "torshim.db"  # the folder is created on open


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(str(db)) as s:
        yield s


def carried(store: Store, port: str = "Ethernet1/1") -> frozenset[int]:
    """The VLANs the port must carry for the store's live connections on it."""
    conns = store.connections(switch="tor-a", port=port)
    return desired_config(port, conns, VLANS).trunk_vlans


def test_refcount_edges_per_port_and_service(store: Store) -> None:
    assert store.add_connection(conn("c1")) is True  # 0 -> 1: add VLAN 100
    assert store.add_connection(conn("c2")) is False  # 1 -> 2
    assert store.add_connection(conn("c3", "blue")) is True  # another service on the port
    assert store.add_connection(conn("c4", port="Ethernet1/2")) is True  # another port
    assert store.refcount("tor-a", "Ethernet1/1", "red") == 2
    assert store.refcounts() == {
        ("tor-a", "Ethernet1/1", "blue"): 1,
        ("tor-a", "Ethernet1/1", "red"): 2,
        ("tor-a", "Ethernet1/2", "red"): 1,
    }
    assert carried(store) == {100, 200}

    assert store.remove_connection("c1") is False  # 2 -> 1: VLAN stays
    assert store.remove_connection("c2") is True  # 1 -> 0: VLAN leaves
    assert carried(store) == {200}
    assert store.remove_connection("c3") is True
    assert carried(store) == frozenset()
    assert store.refcount("tor-a", "Ethernet1/1", "red") == 0
    assert store.refcounts() == {("tor-a", "Ethernet1/2", "red"): 1}


def test_add_and_remove_are_idempotent(store: Store) -> None:
    c = conn("c1")
    assert store.add_connection(c) is True
    gen = store.generation()
    assert store.add_connection(c) is False  # a repeated Request changes nothing
    assert store.add_connection(replace(c, created=1.0, generation=99)) is False
    assert store.generation() == gen
    assert store.refcount("tor-a", "Ethernet1/1", "red") == 1
    assert store.remove_connection("c1") is True
    assert store.remove_connection("c1") is False  # a repeated Close too
    assert store.remove_connection("never-seen") is False


def test_same_id_for_another_port_is_refused(store: Store) -> None:
    store.add_connection(conn("c1"))
    with pytest.raises(StoreError, match=r"'c1' is already recorded.*Ethernet1/1"):
        store.add_connection(conn("c1", port="Ethernet1/9"))
    with pytest.raises(StoreError):
        store.add_connection(conn("c1", "blue"))
    assert [c.port for c in store.connections()] == ["Ethernet1/1"]  # nothing half-written


def test_connections_filter_and_bookkeeping(db: Path) -> None:
    ticks = iter(range(1000, 2000))
    with Store(str(db), clock=lambda: float(next(ticks))) as store:
        store.add_connection(conn("c1", node="node-a"))
        store.add_connection(conn("c2", "blue", node="node-b", namespace="ns2"))
        store.add_connection(conn("c3", switch="tor-b", port="swp1"))
        assert [c.id for c in store.connections()] == ["c1", "c2", "c3"]
        assert [c.id for c in store.connections(switch="tor-a")] == ["c1", "c2"]
        assert [c.id for c in store.connections(service="red", switch="tor-b")] == ["c3"]
        assert [c.id for c in store.connections(node="node-b", namespace="ns2")] == ["c2"]
        assert store.connections(port="nope") == []
        c2 = store.connection("c2")
        assert c2 is not None and c2.created == 1001.0 and c2.generation == 2
        assert c2.same_as(conn("c2", "blue", node="node-b", namespace="ns2"))
        assert store.connection("missing") is None
        assert store.refcounts("tor-b") == {("tor-b", "swp1", "red"): 1}


def test_desired_config_refuses_a_stored_service_gone_from_the_config(store: Store) -> None:
    store.add_connection(conn("c1", "gone"))
    with pytest.raises(StoreError, match="no longer configured: gone"):
        carried(store)


def test_applied_config_round_trip(store: Store) -> None:
    assert store.applied("tor-a", "Ethernet1/1") is None
    trunk = PortConfig.trunk("Ethernet1/1", {300, 100}, native=1)
    store.record_applied("tor-a", "Ethernet1/1", trunk, at=5.0)
    got = store.applied("tor-a", "Ethernet1/1")
    assert got is not None and got.config == trunk and got.applied_at == 5.0
    access = PortConfig.access("Ethernet1/1", 200)
    store.record_applied("tor-a", "Ethernet1/1", access)  # replaces
    got = store.applied("tor-a", "Ethernet1/1")
    assert got is not None and got.config == access and got.applied_at > 5.0
    store.record_applied("tor-b", "swp1", PortConfig("swp1"))
    assert [a.port for a in store.all_applied()] == ["Ethernet1/1", "swp1"]
    assert [a.switch for a in store.all_applied("tor-b")] == ["tor-b"]
    with pytest.raises(StoreError, match="recorded as"):
        store.record_applied("tor-a", "Ethernet1/2", trunk)
    store.add_connection(conn("c1", port="Ethernet1/7"))
    assert store.managed_ports("tor-a") == [("tor-a", "Ethernet1/1"), ("tor-a", "Ethernet1/7")]
    assert store.forget_applied("tor-b", "swp1") is True
    assert store.forget_applied("tor-b", "swp1") is False
    assert store.managed_ports("tor-b") == []


def test_everything_survives_reopen(db: Path) -> None:
    with Store(str(db)) as store:
        store.add_connection(conn("c1"))
        store.add_connection(conn("c2"))
        store.record_applied("tor-a", "Ethernet1/1", PortConfig.trunk("Ethernet1/1", {100}))
        gen = store.generation()
    with Store(str(db)) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.generation() == gen
        assert [c.id for c in store.connections()] == ["c1", "c2"]
        assert store.add_connection(conn("c1")) is False  # still known after the restart
        assert store.remove_connection("c1") is False
        assert store.remove_connection("c2") is True
        got = store.applied("tor-a", "Ethernet1/1")
        assert got is not None and got.config.trunk_vlans == {100}
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT COUNT(*) FROM connections").fetchone()[0] == 0
    raw.close()


def test_newer_schema_is_refused(db: Path) -> None:
    Store(str(db)).close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer than this shim"):
        Store(str(db))


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open"):
        Store(str(tmp_path / "file" / "torshim.db"))  # a file where a folder should be


def test_failed_write_rolls_back(store: Store) -> None:
    store.add_connection(conn("c1"))

    def boom(held: str | None, taken: frozenset[str]) -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.lease("red", "c1", boom)
    assert store.leases() == []
    assert store.add_connection(conn("c2")) is False  # the store is still usable


def _hammer(store: Store, ids: list[str], edges: list[bool]) -> None:
    for cid in ids:
        edges.append(store.add_connection(conn(cid)))


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_concurrent_adds_lose_nothing(db: Path, shared: bool) -> None:
    """8 threads add 400 connections (each id twice) to one port: exactly one 0->1 edge, a count
    of 200, then exactly one 1->0 edge when they all go."""
    Store(str(db)).close()
    stores = [Store(str(db))] * 8 if shared else [Store(str(db)) for _ in range(8)]
    ids = [f"c{i}" for i in range(200)]
    edges: list[bool] = []
    threads = [
        threading.Thread(target=_hammer, args=(s, ids[k::4] + ids[k::4], edges))
        for k, s in zip([0, 1, 2, 3] * 2, stores, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(edges) == 800 and edges.count(True) == 1
    check = stores[0]
    assert check.refcount("tor-a", "Ethernet1/1", "red") == 200
    assert check.generation() == 200  # each id inserted once

    removed: list[bool] = []

    def drop(s: Store, part: list[str]) -> None:
        removed.extend(s.remove_connection(cid) for cid in part)

    threads = [threading.Thread(target=drop, args=(s, ids[k::8])) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(removed) == 200 and removed.count(True) == 1
    assert check.refcounts() == {}
    for s in set(stores):
        s.close()


def test_a_version_1_file_is_migrated_and_keeps_its_connections(tmp_path: Path) -> None:
    """Connections stored before the `mode` column existed read back as trunk (VF) connections."""
    import sqlite3

    from torshim.store import MIGRATIONS

    path = str(tmp_path / "v1.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for sql in MIGRATIONS[0]:
        db.execute(sql)
    db.execute("INSERT INTO schema_version (version) VALUES (1)")
    db.execute(
        "INSERT INTO connections VALUES ('c1', 'red', 'tor1', 'Ethernet1/1', 'node-a', 'ens1f0', "
        "'0000:3b:02.0', 'red', 1.0, 1)"
    )
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version() == len(MIGRATIONS)
        (c,) = store.connections()
        assert c.id == "c1" and c.mode == "trunk" and c.vf_pci == "0000:3b:02.0"
