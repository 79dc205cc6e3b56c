"""The registry's gRPC services: `registry.NetworkServiceRegistry` and
`registry.NetworkServiceEndpointRegistry` (Register, Find with optional watch, Unregister), over a
store.Backend, with the pNSR (proxy.py) for names of other domains.

- **Register** (endpoint) checks the names (names.py) and the URL (`tcp://host:port` or
  `unix:///path`), and sets `expiration_time`: the caller's, cut to now + `max_ttl`, or now +
  `default_ttl` when it gave none (or one already past). The answer is the stored registration,
  with `expiration_time` and `initial_registration_time` (kept across refreshes). A refresh is the
  same Register again. An empty name gets a generated one (`nse-<12 hex>`), as NSM's registry does.
- **Register** (service) stores name, payload and matches; services do not expire.
- **Unregister** removes the name; an unknown name is no error (it may have expired meanwhile).
- **Find** streams what matches now, then, with watch=true, every later change that matches
  (deleted=true for Unregister and expiry) until the caller cancels.
- Names may say `@domain`. This registry's own domain is the same as none. A name of another domain
  in Find goes to that domain's registry (proxy.py); in Register or Unregister it is refused: each
  domain's registry holds what its own endpoints register.
- Expiry: a sweeper thread deletes endpoints when their time comes (it sleeps until the next
  expiration, at most `SWEEP_MAX` seconds) and watchers get deleted=true. Between the deadline and
  the sweep, Find already leaves the endpoint out.

Errors: INVALID_ARGUMENT (a bad name, URL or query, a remote name to register), NOT_FOUND (a domain
with no registry in DNS), UNAVAILABLE (DNS failing, another domain's registry unreachable, the
store failing), else the remote registry's own code. Details are one line.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from nsmgr.registry import names
from nsmgr.registry.errors import (
    BadRequest,
    InvalidName,
    NotFound,
    RegistryError,
    RemoteError,
    ResolveError,
    StoreError,
)
from nsmgr.registry.metrics import Metrics
from nsmgr.registry.model import (
    Change,
    Endpoint,
    EndpointQuery,
    Service,
    ServiceQuery,
    endpoint_from_pb,
    endpoint_to_pb,
    service_from_pb,
    service_to_pb,
)
from nsmgr.registry.proxy import Proxy
from nsmgr.registry.store import Backend
from sriov_nsm_wire.registry import registry_pb2 as pb
from sriov_nsm_wire.registry import registry_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SWEEP_MAX = 5.0  # seconds between sweeps at most (an edit in the CRD store, a clock step)

CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidName, grpc.StatusCode.INVALID_ARGUMENT),
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (ResolveError, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.UNAVAILABLE),
)


def status_of(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, RemoteError):
        return getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNAVAILABLE)
    for cls, code in CODES:
        if isinstance(e, cls):
            return code
    return grpc.StatusCode.INTERNAL


class Registry:
    """Registration rules, queries and expiry over one backend; the servicers below are its wire."""

    def __init__(
        self,
        backend: Backend,
        *,
        domain: str,
        default_ttl: float = 60.0,
        max_ttl: float = 600.0,
        proxy: Proxy | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.domain = names.check_domain(domain)
        self.default_ttl, self.max_ttl = default_ttl, max_ttl
        self.proxy = proxy
        self.clock = clock
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_due = float("inf")
        self._sweeper: threading.Thread | None = None
        self._watches: set[queue.SimpleQueue[Change | None]] = set()
        self._watch_lock = threading.Lock()
        self.store_ok = False  # the last sweep reached the store (readiness)

    # -- names ------------------------------------------------------------------------------------
    def _local(self, text: str, what: str) -> str:
        q = names.parse(text, self.domain, what)
        if q.is_remote:
            raise BadRequest(
                f"{what} {text!r} is in domain {q.domain!r}: this registry registers names of "
                f"{self.domain!r} only; register it with {q.domain}'s registry"
            )
        return q.name

    def _query_names(self, texts: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
        """(the query's domain, "" for local; each text -> its name without domain)."""
        domains: set[str] = set()
        local: dict[str, str] = {}
        for text, what in texts:
            q = names.parse(text, self.domain, what)
            local[text] = q.name
            if q.domain:
                domains.add(q.domain)
        if len(domains) > 1:
            raise BadRequest(f"a query names more than one domain: {', '.join(sorted(domains))}")
        return (domains.pop() if domains else ""), local

    # -- services ---------------------------------------------------------------------------------
    def register_service(self, m: pb.NetworkService) -> pb.NetworkService:
        if not m.name:
            raise BadRequest("a network service needs a name")
        s = service_from_pb(m)
        stored = self.backend.put_service(
            Service(self._local(s.name, "network service name"), s.payload, s.matches)
        )
        return service_to_pb(stored)

    def unregister_service(self, m: pb.NetworkService) -> None:
        if not m.name:
            raise BadRequest("Unregister needs the network service's name")
        self.backend.delete_service(self._local(m.name, "network service name"))

    def find_services(
        self, q: pb.NetworkServiceQuery, context: grpc.ServicerContext | None = None
    ) -> Iterator[pb.NetworkServiceResponse]:
        ns = q.network_service
        domain, local = self._query_names([(ns.name, "network service name")] if ns.name else [])
        if domain:
            yield from self._remote(domain, context, "services", q)
            return
        query = ServiceQuery(local.get(ns.name, ""), ns.payload)

        def current() -> list[Service]:
            return self.backend.find_services(query)

        for change in self._local_stream(query.matches, q.watch, context, Service, current):
            assert isinstance(change.record, Service)
            yield pb.NetworkServiceResponse(
                network_service=service_to_pb(change.record), deleted=change.deleted
            )

    # -- endpoints --------------------------------------------------------------------------------
    def register_endpoint(self, m: pb.NetworkServiceEndpoint) -> pb.NetworkServiceEndpoint:
        now = self.clock()
        e = endpoint_from_pb(m)
        name = self._local(e.name, "endpoint name") if e.name else f"nse-{uuid.uuid4().hex[:12]}"
        services = tuple(self._local(n, "network service name") for n in e.network_service_names)
        labels = {
            self._local(k, "network service name (a network_service_labels key)"): dict(v)
            for k, v in e.network_service_labels.items()
        }
        if not e.url:
            raise BadRequest(f"endpoint {name!r} has no url (tcp://host:port or unix:///path)")
        names.check_url(e.url, f"url of endpoint {name!r}")
        asked = e.expires
        expires = now + self.default_ttl if asked <= now else min(asked, now + self.max_ttl)
        stored = self.backend.put_endpoint(
            Endpoint(name, services, labels, e.url, expires, registered=now), now
        )
        if expires < self._next_due:
            self._wake.set()  # the sweeper is asleep until a later expiry
        return endpoint_to_pb(stored)

    def unregister_endpoint(self, m: pb.NetworkServiceEndpoint) -> None:
        if not m.name:
            raise BadRequest("Unregister needs the endpoint's name")
        self.backend.delete_endpoint(self._local(m.name, "endpoint name"))

    def find_endpoints(
        self, q: pb.NetworkServiceEndpointQuery, context: grpc.ServicerContext | None = None
    ) -> Iterator[pb.NetworkServiceEndpointResponse]:
        nse = q.network_service_endpoint
        texts = [(nse.name, "endpoint name")] if nse.name else []
        texts += [(n, "network service name") for n in nse.network_service_names]
        texts += [(k, "network service name (a labels key)") for k in nse.network_service_labels]
        domain, local = self._query_names(texts)
        if domain:
            yield from self._remote(domain, context, "endpoints", q)
            return
        if nse.url:
            names.check_url(nse.url, "url in the query")
        query = EndpointQuery(
            name=local.get(nse.name, ""),
            network_service_names=tuple(local[n] for n in nse.network_service_names),
            network_service_labels={
                local[k]: dict(v.labels) for k, v in nse.network_service_labels.items()
            },
            url=nse.url,
        )

        def current() -> list[Endpoint]:
            return self.backend.find_endpoints(query, self.clock())

        for change in self._local_stream(query.matches, q.watch, context, Endpoint, current):
            assert isinstance(change.record, Endpoint)
            yield pb.NetworkServiceEndpointResponse(
                network_service_endpoint=endpoint_to_pb(change.record), deleted=change.deleted
            )

    # -- streams ----------------------------------------------------------------------------------
    def _local_stream(
        self,
        matches: Callable[[Any], bool],
        watch: bool,
        context: grpc.ServicerContext | None,
        kind: type,
        current: Callable[[], list[Any]],
    ) -> Iterator[Change]:
        """What matches now; with `watch`, then every matching change until the call ends."""
        if not watch:
            started = time.perf_counter()
            for record in current():
                yield Change(record)
            self.metrics.find_seconds.labels("local").observe(time.perf_counter() - started)
            return
        changes: queue.SimpleQueue[Change | None] = queue.SimpleQueue()
        unsubscribe = self.backend.subscribe(changes.put)  # before the snapshot: nothing lost
        with self._watch_lock:
            self._watches.add(changes)
        if context is not None:
            context.add_callback(lambda: changes.put(None))  # the caller cancelled or we stop
        self.metrics.watches.inc()
        try:
            sent: dict[str, Any] = {}
            for record in current():
                sent[record.name] = record
                yield Change(record)
            while not self._stop.is_set():
                change = changes.get()
                if change is None:
                    return
                if not isinstance(change.record, kind) or not matches(change.record):
                    continue
                # A write between subscribe and snapshot is in both: send it once.
                if sent.pop(change.record.name, None) == change.record and not change.deleted:
                    continue
                yield change
        finally:
            unsubscribe()
            with self._watch_lock:
                self._watches.discard(changes)
            self.metrics.watches.dec()

    def _remote(
        self, domain: str, context: grpc.ServicerContext | None, what: str, q: Any
    ) -> Iterator[Any]:
        if self.proxy is None:
            raise BadRequest(
                f"domain {domain!r} is not this registry's ({self.domain!r}) and interdomain "
                "Find is off (proxy.enabled: false)"
            )
        remaining = context.time_remaining() if context is not None else None
        timeout = None if remaining is None else max(remaining - 0.05, 0.01)

        def on_call(call: Any) -> None:
            if context is not None:
                context.add_callback(call.cancel)  # the caller went away: stop the relay too

        started = time.perf_counter()
        if what == "endpoints":
            yield from self.proxy.find_endpoints(domain, q, timeout=timeout, on_call=on_call)
        else:
            yield from self.proxy.find_services(domain, q, timeout=timeout, on_call=on_call)
        if not q.watch:
            self.metrics.find_seconds.labels("remote").observe(time.perf_counter() - started)

    # -- expiry -----------------------------------------------------------------------------------
    def sweep(self) -> list[Endpoint]:
        """Delete what has expired now (watchers hear deleted=true); refresh the gauges."""
        now = self.clock()
        gone = self.backend.expire(now)
        if gone:
            self.metrics.expired.inc(len(gone))
            log.info("expired %d endpoint(s): %s", len(gone), ", ".join(e.name for e in gone))
        services, endpoints = self.backend.counts(now)
        self.metrics.services.set(services)
        self.metrics.endpoints.set(endpoints)
        self.store_ok = True
        return gone

    def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.sweep()
                nxt = self.backend.next_expiry()
            except RegistryError as e:
                if self.store_ok:
                    log.warning("expiry sweep failed: %s", e)
                self.store_ok = False
                nxt = None
            now = self.clock()
            self._next_due = nxt if nxt is not None else float("inf")
            wait = SWEEP_MAX if nxt is None else min(max(nxt - now, 0.0) + 0.005, SWEEP_MAX)
            self._wake.wait(wait)

    def start(self) -> None:
        self._sweeper = threading.Thread(target=self._sweep_loop, name="expiry", daemon=True)
        self._sweeper.start()

    def stop(self) -> None:
        """Stop the sweeper and end every open watch (their streams close normally)."""
        self._stop.set()
        self._wake.set()
        with self._watch_lock:
            for q in self._watches:
                q.put(None)
        if self._sweeper is not None:
            self._sweeper.join(10)


# -- the wire -------------------------------------------------------------------------------------


def _abort(context: grpc.ServicerContext, e: RegistryError) -> Any:
    return context.abort(status_of(e), " ".join(str(e).split()))


class _Counted:
    def __init__(self, reg: Registry, which: str) -> None:
        self.reg, self.which = reg, which

    def _count(self, method: str, code: grpc.StatusCode) -> None:
        self.reg.metrics.requests.labels(self.which, method, code.name).inc()

    def _unary(self, method: str, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        try:
            out = fn()
        except RegistryError as e:
            self._count(method, status_of(e))
            log.info("%s %s refused: %s", self.which, method, e)
            return _abort(context, e)
        self._count(method, grpc.StatusCode.OK)
        return out

    def _stream(self, context: grpc.ServicerContext, stream: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from stream
        except RegistryError as e:
            self._count("Find", status_of(e))
            _abort(context, e)
        self._count("Find", grpc.StatusCode.OK)


class ServiceRegistryServicer(_Counted, pb_grpc.NetworkServiceRegistryServicer):
    def __init__(self, reg: Registry) -> None:
        super().__init__(reg, "ns")

    def Register(self, request: pb.NetworkService, context: grpc.ServicerContext) -> Any:
        return self._unary("Register", context, lambda: self.reg.register_service(request))

    def Find(self, request: pb.NetworkServiceQuery, context: grpc.ServicerContext) -> Any:
        return self._stream(context, self.reg.find_services(request, context))

    def Unregister(self, request: pb.NetworkService, context: grpc.ServicerContext) -> Any:
        def unregister() -> empty_pb2.Empty:
            self.reg.unregister_service(request)
            return empty_pb2.Empty()

        return self._unary("Unregister", context, unregister)


class EndpointRegistryServicer(_Counted, pb_grpc.NetworkServiceEndpointRegistryServicer):
    def __init__(self, reg: Registry) -> None:
        super().__init__(reg, "nse")

    def Register(self, request: pb.NetworkServiceEndpoint, context: grpc.ServicerContext) -> Any:
        return self._unary("Register", context, lambda: self.reg.register_endpoint(request))

    def Find(self, request: pb.NetworkServiceEndpointQuery, context: grpc.ServicerContext) -> Any:
        return self._stream(context, self.reg.find_endpoints(request, context))

    def Unregister(self, request: pb.NetworkServiceEndpoint, context: grpc.ServicerContext) -> Any:
        def unregister() -> empty_pb2.Empty:
            self.reg.unregister_endpoint(request)
            return empty_pb2.Empty()

        return self._unary("Unregister", context, unregister)


def add_to_server(reg: Registry, server: grpc.Server) -> None:
    pb_grpc.add_NetworkServiceRegistryServicer_to_server(ServiceRegistryServicer(reg), server)
    pb_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(
        EndpointRegistryServicer(reg), server
    )
