"""The shim's embedded state: connections, leases and last applied port configs, in one SQLite file.

Why SQLite: the state must survive a restart (a VLAN left on a port after a crash is exactly the
networking-generic-switch bug we fix), and one file with transactions is enough for one shim.

- Reference counts per (switch, port, service) are a `GROUP BY` over the live connections, never a
  separately kept counter, so they cannot drift from the connections they count.
- Every write runs in one `BEGIN IMMEDIATE` transaction: the write lock is taken up front, so a
  read-then-write (is this the first connection on the port?) cannot interleave with another writer.
- Threads: one `Store` holds one sqlite3 connection guarded by a lock; share the `Store` between
  threads (writes are serialised by SQLite anyway). Several `Store`s (or processes) on the same file
  also work: WAL lets readers run beside the writer and `busy_timeout` makes writers wait their turn.
- The schema is created or migrated on open, in one transaction, and recorded in `schema_version`;
  a file written by a newer shim is refused rather than misread.
- `generation` is a store-wide counter bumped by every change to the connections; each connection
  keeps the value of its insert, so "what changed since N" is a comparison.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torshim.errors import ShimError, StoreError
from torshim.model import PortConfig

# Each entry takes the schema from version i to i + 1; append, never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE connections (
            id TEXT PRIMARY KEY,
            service TEXT NOT NULL,
            switch TEXT NOT NULL,
            port TEXT NOT NULL,
            node TEXT NOT NULL,
            pf TEXT NOT NULL,
            vf_pci TEXT,
            namespace TEXT NOT NULL,
            created REAL NOT NULL,
            generation INTEGER NOT NULL)""",
        "CREATE INDEX connections_by_port ON connections (switch, port, service)",
        """CREATE TABLE leases (
            service TEXT NOT NULL,
            address TEXT NOT NULL,
            connection_id TEXT NOT NULL,
            leased_at REAL NOT NULL,
            PRIMARY KEY (service, address),
            UNIQUE (service, connection_id))""",
        """CREATE TABLE applied (
            switch TEXT NOT NULL,
            port TEXT NOT NULL,
            config TEXT NOT NULL,
            applied_at REAL NOT NULL,
            PRIMARY KEY (switch, port))""",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO counters (name, value) VALUES ('generation', 0)",
    ),
    # 2: how the connection uses its port: "trunk" (a VF; the NIC tags it) or "access" (the port).
    ("ALTER TABLE connections ADD COLUMN mode TEXT NOT NULL DEFAULT 'trunk'",),
    # 3: when an unrefreshed connection expires (NSM's path expiry), wall clock; 0: never.
    ("ALTER TABLE connections ADD COLUMN expires REAL NOT NULL DEFAULT 0",),
)
SCHEMA_VERSION = len(MIGRATIONS)
_CONN_COLUMNS = (
    "id, service, switch, port, node, pf, vf_pci, namespace, created, generation, mode, expires"
)


@dataclass(frozen=True)
class Connection:
    """One NSM connection: a VF (or a whole PF when vf_pci is None) using a service on a TOR port.
    `created` and `generation` are the store's: whatever is passed in is ignored."""

    id: str
    service: str
    switch: str
    port: str
    node: str
    pf: str
    vf_pci: str | None = None
    namespace: str = ""
    created: float = 0.0
    generation: int = 0
    mode: str = "trunk"  # "trunk": a VF on a PF port; "access": the whole port
    expires: float = 0.0  # wall clock; 0: never (set with `touch`, not part of the identity)

    def same_as(self, other: Connection) -> bool:
        """Equal apart from the store's bookkeeping: a repeated Request, not a different one."""
        return _identity(self) == _identity(other)


def _identity(c: Connection) -> tuple[Any, ...]:
    return (c.id, c.service, c.switch, c.port, c.node, c.pf, c.vf_pci, c.namespace, c.mode)


@dataclass(frozen=True)
class Lease:
    service: str
    address: str
    connection_id: str
    leased_at: float


@dataclass(frozen=True)
class AppliedPort:
    """What the shim last committed (and verified) on a port, and when."""

    switch: str
    port: str
    config: PortConfig
    applied_at: float


# Called inside the lease transaction with this connection's current address (or None) and the
# addresses other connections of the service hold; returns the address to hold from now on.
PickAddress = Callable[[str | None, frozenset[str]], str]


class Store:
    """The state of one shim; open with `Store(path)` or `with Store(path) as store:`."""

    def __init__(
        self,
        path: str,
        *,
        durable: bool = True,
        busy_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`durable` fsyncs every commit (synchronous=FULL): a connection lost in a power cut
        would make reconcile remove a VLAN that a live VF still uses."""
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        try:
            if path != ":memory:":
                parent = os.path.dirname(os.path.abspath(path))
                os.makedirs(parent, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{path}: cannot open the state store: {e}") from e
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: cannot start a write: {e}") from e
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"{self.path}: write failed: {e}") from e
                raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: read failed: {e}") from e

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (0)")
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {current} is newer than this shim's "
                    f"{SCHEMA_VERSION}; upgrade the shim"
                )
            for statements in MIGRATIONS[current:]:
                for sql in statements:
                    db.execute(sql)
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        return int(self._read("SELECT version FROM schema_version")[0][0])

    def generation(self) -> int:
        return int(self._read("SELECT value FROM counters WHERE name = 'generation'")[0][0])

    @staticmethod
    def _bump(db: sqlite3.Connection) -> int:
        db.execute("UPDATE counters SET value = value + 1 WHERE name = 'generation'")
        return int(db.execute("SELECT value FROM counters WHERE name = 'generation'").fetchone()[0])

    @staticmethod
    def _count(db: sqlite3.Connection, switch: str, port: str, service: str) -> int:
        sql = "SELECT COUNT(*) FROM connections WHERE switch = ? AND port = ? AND service = ?"
        return int(db.execute(sql, (switch, port, service)).fetchone()[0])

    # -- connections ------------------------------------------------------------------------------
    def add_connection(self, conn: Connection) -> bool:
        """Record a live connection. True when it is the first of its service on its port (the
        VLAN must be added). Repeating the same connection is a no-op (False); the same id with
        other fields is a StoreError: it would silently move a VLAN."""
        with self._write() as db:
            row = db.execute(f"SELECT {_CONN_COLUMNS} FROM connections WHERE id = ?", (conn.id,))
            found = row.fetchone()
            if found is not None:
                old = Connection(*found)
                if old.same_as(conn):
                    return False
                raise StoreError(
                    f"connection {conn.id!r} is already recorded for service {old.service!r} on "
                    f"{old.switch} {old.port} ({old.node} {old.pf}); close it before reusing the id"
                )
            first = self._count(db, conn.switch, conn.port, conn.service) == 0
            generation = self._bump(db)
            db.execute(
                "INSERT INTO connections (id, service, switch, port, node, pf, vf_pci, namespace, "
                "mode, created, generation, expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_identity(conn), self._clock(), generation, conn.expires),
            )
            return first

    def remove_connection(self, connection_id: str) -> bool:
        """Forget a connection. True when it was the last of its service on its port (the VLAN
        must leave the port). Unknown ids are a no-op (False): Close may be repeated. Leases are
        not touched; release them through ipam."""
        with self._write() as db:
            sql = "SELECT switch, port, service FROM connections WHERE id = ?"
            found = db.execute(sql, (connection_id,)).fetchone()
            if found is None:
                return False
            db.execute("DELETE FROM connections WHERE id = ?", (connection_id,))
            self._bump(db)
            return self._count(db, *found) == 0

    def touch(self, connection_id: str, expires: float) -> bool:
        """Set when the connection expires unless refreshed again (0: never); False if unknown."""
        with self._write() as db:
            sql = "UPDATE connections SET expires = ? WHERE id = ?"
            return db.execute(sql, (expires, connection_id)).rowcount > 0

    def expired(self, now: float) -> list[Connection]:
        """Connections whose expiry has passed: their client stopped refreshing them."""
        sql = (
            f"SELECT {_CONN_COLUMNS} FROM connections WHERE expires > 0 AND expires <= ? "
            "ORDER BY expires"
        )
        return [Connection(*r) for r in self._read(sql, (now,))]

    def connection(self, connection_id: str) -> Connection | None:
        rows = self._read(f"SELECT {_CONN_COLUMNS} FROM connections WHERE id = ?", (connection_id,))
        return Connection(*rows[0]) if rows else None

    def connections(
        self,
        *,
        switch: str | None = None,
        port: str | None = None,
        service: str | None = None,
        node: str | None = None,
        namespace: str | None = None,
    ) -> list[Connection]:
        """The live connections matching every given field, oldest first."""
        where, args = _filter(switch=switch, port=port, service=service, node=node, ns=namespace)
        sql = f"SELECT {_CONN_COLUMNS} FROM connections{where} ORDER BY generation, id"
        return [Connection(*r) for r in self._read(sql, args)]

    def count(self) -> int:
        """How many connections are live (for the gauge: no rows read)."""
        return int(self._read("SELECT COUNT(*) FROM connections")[0][0])

    def refcount(self, switch: str, port: str, service: str) -> int:
        with self._lock:
            return self._count(self._db, switch, port, service)

    def refcounts(self, switch: str | None = None) -> dict[tuple[str, str, str], int]:
        """(switch, port, service) -> live connections, derived from the connections table."""
        where, args = _filter(switch=switch)
        sql = (
            f"SELECT switch, port, service, COUNT(*) FROM connections{where} "
            "GROUP BY switch, port, service ORDER BY switch, port, service"
        )
        return {(sw, p, s): n for sw, p, s, n in self._read(sql, args)}

    def managed_ports(self, switch: str | None = None) -> list[tuple[str, str]]:
        """Ports with live connections or an applied config: what reconcile must look at."""
        where, args = _filter(switch=switch)
        sql = (
            f"SELECT switch, port FROM connections{where} UNION "
            f"SELECT switch, port FROM applied{where} ORDER BY 1, 2"
        )
        return [(sw, p) for sw, p in self._read(sql, args + args)]

    # -- applied port configs ---------------------------------------------------------------------
    def record_applied(
        self, switch: str, port: str, config: PortConfig, at: float | None = None
    ) -> None:
        """Remember what was committed on a port, replacing what was there before."""
        if config.port != port:
            raise StoreError(f"a PortConfig for {config.port} recorded as {switch} {port}")
        text = json.dumps(
            {
                "mode": config.mode,
                "access_vlan": config.access_vlan,
                "native_vlan": config.native_vlan,
                "trunk_vlans": sorted(config.trunk_vlans),
            }
        )
        with self._write() as db:
            db.execute(
                "INSERT INTO applied (switch, port, config, applied_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (switch, port) DO UPDATE SET config = excluded.config, "
                "applied_at = excluded.applied_at",
                (switch, port, text, self._clock() if at is None else at),
            )

    def applied(self, switch: str, port: str) -> AppliedPort | None:
        sql = "SELECT switch, port, config, applied_at FROM applied WHERE switch = ? AND port = ?"
        rows = self._read(sql, (switch, port))
        return self._applied(*rows[0]) if rows else None

    def all_applied(self, switch: str | None = None) -> list[AppliedPort]:
        where, args = _filter(switch=switch)
        sql = f"SELECT switch, port, config, applied_at FROM applied{where} ORDER BY switch, port"
        return [self._applied(*r) for r in self._read(sql, args)]

    def forget_applied(self, switch: str, port: str) -> bool:
        """Drop a port's record (it left the port map); True if there was one."""
        with self._write() as db:
            cur = db.execute("DELETE FROM applied WHERE switch = ? AND port = ?", (switch, port))
            return cur.rowcount > 0

    def _applied(self, switch: str, port: str, text: str, at: float) -> AppliedPort:
        try:
            d = json.loads(text)
            config = PortConfig(
                port,
                d["mode"],
                d["access_vlan"],
                d["native_vlan"],
                frozenset(d["trunk_vlans"]),
            )
        except (ValueError, KeyError, TypeError, ShimError) as e:
            raise StoreError(f"{self.path}: unreadable applied config of {switch} {port}") from e
        return AppliedPort(switch, port, config, at)

    # -- address leases (the policy lives in torshim.ipam) ----------------------------------------
    def lease(self, service: str, connection_id: str, pick: PickAddress) -> Lease:
        """The connection's lease in the service, as `pick` decides, in one transaction so two
        connections never get the same address. An exception from `pick` leaves nothing changed."""
        with self._write() as db:
            sql = "SELECT address, leased_at FROM leases WHERE service = ? AND connection_id = ?"
            found = db.execute(sql, (service, connection_id)).fetchone()
            sql = "SELECT address FROM leases WHERE service = ? AND connection_id != ?"
            taken = frozenset(a for (a,) in db.execute(sql, (service, connection_id)))
            address = pick(found[0] if found else None, taken)
            if found is not None:
                if address == found[0]:
                    return Lease(service, address, connection_id, found[1])
                sql = "DELETE FROM leases WHERE service = ? AND connection_id = ?"
                db.execute(sql, (service, connection_id))
            now = self._clock()
            db.execute(
                "INSERT INTO leases (service, address, connection_id, leased_at) "
                "VALUES (?, ?, ?, ?)",
                (service, address, connection_id, now),
            )
            return Lease(service, address, connection_id, now)

    def release(self, service: str, connection_id: str) -> bool:
        """Give the connection's address back; True if it held one."""
        with self._write() as db:
            sql = "DELETE FROM leases WHERE service = ? AND connection_id = ?"
            return db.execute(sql, (service, connection_id)).rowcount > 0

    def leases(self, service: str | None = None, connection_id: str | None = None) -> list[Lease]:
        where, args = _filter(service=service, connection_id=connection_id)
        sql = (
            f"SELECT service, address, connection_id, leased_at FROM leases{where} "
            "ORDER BY service, leased_at, address"
        )
        return [Lease(*r) for r in self._read(sql, args)]


_FILTER_COLUMNS = {
    "switch": "switch",
    "port": "port",
    "service": "service",
    "node": "node",
    "ns": "namespace",
    "connection_id": "connection_id",
}


def _filter(**given: str | None) -> tuple[str, tuple[str, ...]]:
    """` WHERE a = ? AND b = ?` for the given (non-None) fields; column names are fixed here."""
    pairs = [(_FILTER_COLUMNS[k], v) for k, v in given.items() if v is not None]
    if not pairs:
        return "", ()
    return " WHERE " + " AND ".join(f"{c} = ?" for c, _ in pairs), tuple(v for _, v in pairs)
