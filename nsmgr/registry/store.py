"""Where registrations live: one `Backend` interface, the embedded SQLite backend (the default).

The Kubernetes CRD backend (kube.py) implements the same interface; one conformance suite runs
against both. The interface is deliberately small:

- `put_*` upserts (a refresh is a put), `delete_*` returns what it removed (None: nothing),
  `find_*` returns the records a query matches (model.py's rules), endpoints only while live.
- `expire(now)` deletes the endpoints whose time has come and returns them; `next_expiry()` lets the
  sweeper sleep exactly until the next one is due.
- `subscribe(fn)` tells `fn` every change made through this backend (`Change`, deleted=True for
  removals and expiries), in the order they were made. `fn` runs inside the write, so it must not
  block or call back into the backend: the gRPC watchers hand changes to a queue.

Why SQLite: registrations must survive a registry restart (clients refresh every TTL/3 or so, but
Find must not answer "nothing" in between), and one file with transactions is enough for one
registry. WAL with synchronous=NORMAL: a commit never waits for fsync, which is right for data
that every client re-sends within its TTL anyway.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from nsmgr.registry.errors import StoreError
from nsmgr.registry.model import (
    Change,
    Endpoint,
    EndpointQuery,
    Service,
    ServiceQuery,
    to_json_text,
)

log = logging.getLogger(__name__)

Subscriber = Callable[[Change], None]


class Backend(Protocol):
    def put_service(self, service: Service) -> Service: ...

    def delete_service(self, name: str) -> Service | None: ...

    def find_services(self, query: ServiceQuery) -> list[Service]: ...

    def put_endpoint(self, endpoint: Endpoint, now: float) -> Endpoint:
        """Upsert; a refresh of a live endpoint keeps its first `registered` time."""
        ...

    def delete_endpoint(self, name: str) -> Endpoint | None: ...

    def find_endpoints(self, query: EndpointQuery, now: float) -> list[Endpoint]: ...

    def expire(self, now: float) -> list[Endpoint]: ...

    def next_expiry(self) -> float | None: ...

    def counts(self, now: float) -> tuple[int, int]:
        """(services, live endpoints)."""
        ...

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Start telling `fn` about changes; call the result to stop."""
        ...

    def close(self) -> None: ...


class Notifier:
    """The subscriber list every backend shares."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._sub_lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        with self._sub_lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._sub_lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def notify(self, change: Change) -> None:
        with self._sub_lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(change)
            except Exception:  # one broken watcher must not fail a registration
                log.exception("change subscriber failed")


# Each entry takes the schema from version i to i + 1; append, never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE services (
            name TEXT PRIMARY KEY,
            payload TEXT NOT NULL,
            matches TEXT NOT NULL)""",
        """CREATE TABLE endpoints (
            name TEXT PRIMARY KEY,
            services TEXT NOT NULL,
            labels TEXT NOT NULL,
            url TEXT NOT NULL,
            expires REAL NOT NULL,
            registered REAL NOT NULL)""",
        "CREATE INDEX endpoints_by_expiry ON endpoints (expires)",
        # Which endpoints offer a service: Find by service name is an index lookup.
        """CREATE TABLE offers (
            service TEXT NOT NULL,
            endpoint TEXT NOT NULL REFERENCES endpoints (name) ON DELETE CASCADE,
            PRIMARY KEY (service, endpoint))""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
_EP_COLUMNS = "e.name, e.services, e.labels, e.url, e.expires, e.registered"


def _endpoint(row: tuple[Any, ...]) -> Endpoint:
    name, services, labels, url, expires, registered = row
    return Endpoint(name, tuple(json.loads(services)), json.loads(labels), url, expires, registered)


def _service(row: tuple[Any, ...]) -> Service:
    name, payload, matches = row
    return Service(name, payload, tuple(json.loads(matches)))


class SqliteBackend(Notifier):
    """Registrations in one SQLite file (`:memory:` for tests)."""

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        super().__init__()
        self.path = path
        self._lock = threading.RLock()
        try:
            if path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"{path}: cannot open the registry store: {e}") from e
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as e:
            self._db.close()
            raise StoreError(f"{path}: not a usable registry store: {e}") from e
        except BaseException:
            self._db.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (write lock taken up front), rolled back if the block raises."""
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
                    f"{self.path}: schema version {current} is newer than this registry's "
                    f"{SCHEMA_VERSION}; upgrade nsm-registry"
                )
            for statements in MIGRATIONS[current:]:
                for sql in statements:
                    db.execute(sql)
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        return int(self._read("SELECT version FROM schema_version")[0][0])

    # -- services ---------------------------------------------------------------------------------
    def put_service(self, service: Service) -> Service:
        with self._write() as db:
            db.execute(
                "INSERT INTO services (name, payload, matches) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET payload = excluded.payload, matches = excluded.matches",
                (service.name, service.payload, to_json_text(list(service.matches))),
            )
            self.notify(Change(service))
        return service

    def delete_service(self, name: str) -> Service | None:
        with self._write() as db:
            sql = "SELECT name, payload, matches FROM services WHERE name = ?"
            row = db.execute(sql, (name,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM services WHERE name = ?", (name,))
            old = _service(row)
            self.notify(Change(old, deleted=True))
        return old

    def find_services(self, query: ServiceQuery) -> list[Service]:
        sql, args = "SELECT name, payload, matches FROM services", ()
        if query.name:
            sql, args = sql + " WHERE name = ?", (query.name,)
        return [
            s for s in map(_service, self._read(sql + " ORDER BY name", args)) if query.matches(s)
        ]

    # -- endpoints --------------------------------------------------------------------------------
    def put_endpoint(self, endpoint: Endpoint, now: float) -> Endpoint:
        with self._write() as db:
            sql = "SELECT registered, expires FROM endpoints WHERE name = ?"
            row = db.execute(sql, (endpoint.name,)).fetchone()
            registered = row[0] if row is not None and row[1] > now else endpoint.registered
            stored = Endpoint(
                endpoint.name,
                tuple(dict.fromkeys(endpoint.network_service_names)),  # no duplicates, in order
                {k: dict(v) for k, v in endpoint.network_service_labels.items()},
                endpoint.url,
                endpoint.expires,
                registered,
            )
            db.execute(
                "INSERT INTO endpoints (name, services, labels, url, expires, registered) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "services = excluded.services, labels = excluded.labels, url = excluded.url, "
                "expires = excluded.expires, registered = excluded.registered",
                (
                    stored.name,
                    json.dumps(list(stored.network_service_names)),
                    to_json_text(stored.network_service_labels),
                    stored.url,
                    stored.expires,
                    stored.registered,
                ),
            )
            db.execute("DELETE FROM offers WHERE endpoint = ?", (stored.name,))
            db.executemany(
                "INSERT INTO offers (service, endpoint) VALUES (?, ?)",
                [(s, stored.name) for s in stored.network_service_names],
            )
            self.notify(Change(stored))
        return stored

    def delete_endpoint(self, name: str) -> Endpoint | None:
        with self._write() as db:
            row = db.execute(f"SELECT {_EP_COLUMNS} FROM endpoints e WHERE name = ?", (name,))
            found = row.fetchone()
            if found is None:
                return None
            db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            old = _endpoint(found)
            self.notify(Change(old, deleted=True))
        return old

    def find_endpoints(self, query: EndpointQuery, now: float) -> list[Endpoint]:
        if query.name:
            sql = f"SELECT {_EP_COLUMNS} FROM endpoints e WHERE e.name = ? AND e.expires > ?"
            args: tuple[Any, ...] = (query.name, now)
        elif query.network_service_names:
            sql = (
                f"SELECT {_EP_COLUMNS} FROM offers o JOIN endpoints e ON e.name = o.endpoint "
                "WHERE o.service = ? AND e.expires > ?"
            )
            args = (query.network_service_names[0], now)
        else:
            sql, args = f"SELECT {_EP_COLUMNS} FROM endpoints e WHERE e.expires > ?", (now,)
        rows = self._read(sql + " ORDER BY e.name", args)
        return [e for e in map(_endpoint, rows) if query.matches(e)]

    def expire(self, now: float) -> list[Endpoint]:
        with self._write() as db:
            sql = f"SELECT {_EP_COLUMNS} FROM endpoints e WHERE e.expires <= ? ORDER BY e.expires"
            gone = [_endpoint(r) for r in db.execute(sql, (now,)).fetchall()]
            db.execute("DELETE FROM endpoints WHERE expires <= ?", (now,))
            for e in gone:
                self.notify(Change(e, deleted=True))
        return gone

    def next_expiry(self) -> float | None:
        value = self._read("SELECT MIN(expires) FROM endpoints")[0][0]
        return None if value is None else float(value)

    def counts(self, now: float) -> tuple[int, int]:
        services = self._read("SELECT COUNT(*) FROM services")[0][0]
        endpoints = self._read("SELECT COUNT(*) FROM endpoints WHERE expires > ?", (now,))[0][0]
        return int(services), int(endpoints)
