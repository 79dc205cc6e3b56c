"""The shim's domain logic: a request for a VF on a node becomes a connection in the store, an
address lease and a port config on the TOR, converged by that switch's worker. Close undoes it.

Ordering: for each switch, "change the store, compute the port's desired config, submit it" runs
under one lock, so the worker sees port configs in the order the store changed. The worker lets a
later config of a port win over an earlier one, so the last submission always reflects the latest
store state, whatever finishes first.

Failures leave nothing behind. A Request that fails removes the connection and lease it added. The
worker's contract is that a failed transaction changed nothing on the switch. A Close always forgets
the connection (the caller is gone); if the switch cannot be updated, the port is marked for
repair, reconcile retries it, and the caller gets the error.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from torshim import ports as portlogic
from torshim import validate
from torshim.config import NODE_RE, PCI_RE, Service, ShimConfig, SwitchPort, normalise_pf
from torshim.drivers.base import SwitchDriver, driver_class, same
from torshim.errors import (
    CircuitOpen,
    NotFoundError,
    PolicyError,
    ShimError,
    ValidationError,
)
from torshim.ipam import Ipam
from torshim.metrics import Metrics
from torshim.model import ApplyResult, PortConfig
from torshim.store import Connection, Store
from torshim.worker import CircuitBreaker, RetryPolicy, SwitchWorker

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
DriverFactory = Callable[[str], SwitchDriver]  # switch name -> a new driver (session) for it


@dataclass(frozen=True)
class Attachment:
    """What a Request asks of the shim.

    The TOR port comes from the config's port map (node + PF name or PCI address); when the map
    does not know the PF, `tor_switch`/`tor_port` (the LLDP neighbour the caller saw) are used.
    `vf_pci` None with mode "access" attaches the whole port. `namespace` None skips the policy
    check: only the operator's own CLI does that."""

    id: str
    service: str  # name or name@domain
    node: str
    pf: str = ""
    pf_pci: str | None = None
    vf_pci: str | None = None
    mode: str = "trunk"
    namespace: str | None = ""
    tor_switch: str | None = None
    tor_port: str | None = None
    ttl: float = 0.0  # seconds until it expires unless requested again; 0: never (manual)


@dataclass(frozen=True)
class Grant:
    """The answer: the connection as stored, its service, address and the port's config."""

    connection: Connection
    service: Service
    address: IPInterface
    port_config: PortConfig
    result: ApplyResult | None  # None: the port already had it (a refresh)


@dataclass(frozen=True)
class PortReport:
    """One port in an audit: what it should be, what the switch says, and the verdict."""

    switch: str
    port: str
    status: str  # ok | drift | leftover | unreachable | fixed | failed
    desired: PortConfig | None
    actual: PortConfig | None
    connections: int
    detail: str = ""


@dataclass
class _SwitchState:
    worker: SwitchWorker
    lock: threading.Lock = field(default_factory=threading.Lock)
    dirty: set[str] = field(default_factory=set)  # ports whose last transaction failed
    sessions_seen: int = 0


ID_RE_MAX = 256


class Shim:
    def __init__(
        self,
        config: ShimConfig,
        store: Store,
        *,
        driver_factory: DriverFactory | None = None,
        retry: RetryPolicy | None = None,
        breaker_failures: int = 5,
        breaker_cooldown: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.ipam = Ipam(store)
        self.metrics = metrics or Metrics()
        self._factory = driver_factory or self._default_factory
        self._retry = retry
        self._breaker = (breaker_failures, breaker_cooldown)
        self._switches: dict[str, _SwitchState] = {}
        self._lock = threading.Lock()
        self._vlans = {s.name: s.vlan for s in config.services}
        self.metrics.connections.set(store.count())

    def _default_factory(self, switch: str) -> SwitchDriver:
        params = self.config.switch_params(switch)
        return driver_class(params.driver)(params)

    def _switch(self, name: str) -> _SwitchState:
        with self._lock:
            st = self._switches.get(name)
            if st is None:
                self.config.switch(name)  # NotFoundError for an unknown switch
                worker = SwitchWorker(
                    lambda: self._factory(name),
                    name,
                    retry=self._retry,
                    breaker=CircuitBreaker(*self._breaker),
                )
                st = self._switches[name] = _SwitchState(worker)
            return st

    def stop(self) -> None:
        with self._lock:
            states = list(self._switches.values())
        for st in states:
            st.worker.stop()

    # -- lookups (no change anywhere) -------------------------------------------------------------
    def resolve(self, att: Attachment) -> tuple[Service, SwitchPort]:
        """The service and TOR port of a request, every check done: NotFoundError, PolicyError,
        ValidationError, ConflictError-free of side effects."""
        if not att.id or len(att.id) > ID_RE_MAX or not att.id.isprintable():
            raise ValidationError("connection id must be 1-256 printable characters")
        if att.mode not in ("trunk", "access"):
            raise ValidationError(f"mode {att.mode!r} is neither trunk nor access")
        if not NODE_RE.match(att.node):
            raise ValidationError(f"node {att.node!r} is not a Kubernetes node name")
        if att.vf_pci is not None and not PCI_RE.match(att.vf_pci):
            raise ValidationError(f"VF {att.vf_pci!r} is not a PCI address")
        if att.pf_pci is not None and not PCI_RE.match(att.pf_pci):
            raise ValidationError(f"PF {att.pf_pci!r} is not a PCI address")
        if att.pf and not validate.LINUX_IFNAME_RE.match(att.pf):
            raise ValidationError(f"PF {att.pf!r} is not an interface name")
        service = self.config.service(att.service)
        if att.namespace is not None and not service.allows(att.namespace):
            raise PolicyError(
                f"namespace {att.namespace or '(none)'!r} may not use service {service.ref}"
            )
        refs = [n for n in (att.pf, att.pf_pci) if n]
        where = self.config.vf_port(att.node, att.vf_pci) if att.vf_pci else None
        if where is None and refs:
            where = self.config.port_for(att.node, *refs)
        if where is None and att.tor_switch and att.tor_port:
            validate.name(att.tor_switch, "switch name")
            validate.interface(att.tor_port)
            self.config.switch(att.tor_switch)
            where = SwitchPort(att.tor_switch, att.tor_port)
        if where is None:
            raise NotFoundError(
                f"no TOR port known for {att.node} {att.pf or att.pf_pci or '(no PF given)'}: "
                "add it to port_map or let the node report its LLDP neighbour"
            )
        if self.config.is_protected(*where):
            raise PolicyError(f"{where.switch} {where.port} is a protected port")
        return service, where

    def desired(self, switch: str, port: str) -> PortConfig:
        conns = self.store.connections(switch=switch, port=port)
        parking = self.config.switch(switch).parking_vlan
        return portlogic.desired_config(port, conns, self._vlans, parking)

    # -- Request / Close --------------------------------------------------------------------------
    def request(self, att: Attachment, timeout: float | None = None) -> Grant:
        """Make the port carry the service for this connection; idempotent per connection id."""
        start = time.monotonic()
        if att.vf_pci and self.config.vf_port(att.node, att.vf_pci) is not None:
            att = replace(att, mode="access")  # the VF's own port: untagged
        service, (switch, port) = self.resolve(att)
        conn = Connection(
            id=att.id,
            service=service.name,
            switch=switch,
            port=port,
            node=att.node,
            pf=att.pf or (normalise_pf(att.pf_pci) if att.pf_pci else ""),
            vf_pci=normalise_pf(att.vf_pci) if att.vf_pci else None,
            namespace=att.namespace or "",
            mode=att.mode,
        )
        st = self._switch(switch)
        deadline = start + (timeout or self.config.server.request_timeout)
        with st.lock:
            existing = self.store.connection(att.id)
            portlogic.check_joinable(conn, self.store.connections(switch=switch, port=port))
            had_lease = bool(self.store.leases(service.name, att.id))
            address = self.ipam.lease(service, att.id)
            try:
                self.store.add_connection(conn)  # StoreError if the id means something else
                self.store.touch(att.id, time.time() + att.ttl if att.ttl else 0.0)
                want = self.desired(switch, port)
            except BaseException:
                if not had_lease:
                    self.ipam.release(service, att.id)
                raise
            applied = self.store.applied(switch, port)
            refresh = existing is not None and applied is not None and applied.config == want
            fut = (
                None if refresh and port not in st.dirty else self._submit(st, port, want, deadline)
            )
        stored = self.store.connection(att.id) or conn
        if fut is None:
            return Grant(stored, service, address, want, None)
        try:
            result = fut.result()
        except BaseException as e:
            with st.lock:
                if existing is None:
                    self.store.remove_connection(att.id)
                    if not had_lease:
                        self.ipam.release(service, att.id)
                st.dirty.add(port)  # in case the switch holds something after all
            self._count_error(switch, e)
            raise
        self._done(st, switch, port, want, result, start)
        return Grant(stored, service, address, want, result)

    def close(self, connection_id: str, timeout: float | None = None) -> Connection | None:
        """Forget the connection; the port loses its service when no other connection uses it.
        None for an unknown id (Close may be repeated)."""
        start = time.monotonic()
        conn = self.store.connection(connection_id)
        if conn is None:
            return None
        st = self._switch(conn.switch)
        deadline = start + (timeout or self.config.server.request_timeout)
        with st.lock:
            self.store.remove_connection(connection_id)
            self.ipam.release(conn.service, connection_id)
            want = self.desired(conn.switch, conn.port)
            fut = self._submit(st, conn.port, want, deadline)
        self.metrics.connections.set(self.store.count())
        try:
            result = fut.result()
        except BaseException as e:
            with st.lock:
                st.dirty.add(conn.port)
            self._count_error(conn.switch, e)
            if not isinstance(e, ShimError):
                raise
            raise type(e)(
                f"connection {connection_id} closed, but {conn.switch} {conn.port} could not be "
                f"updated ({e}); reconcile will retry"
            ) from e
        self._done(st, conn.switch, conn.port, want, result, start)
        return conn

    def _submit(
        self, st: _SwitchState, port: str, want: PortConfig, deadline: float
    ) -> Future[ApplyResult]:
        fut = st.worker.submit({port: want}, deadline)
        self.metrics.circuit_open.labels(st.worker.name).set(
            1 if st.worker.breaker.state == "open" else 0
        )
        return fut

    def _done(
        self,
        st: _SwitchState,
        switch: str,
        port: str,
        want: PortConfig,
        result: ApplyResult,
        start: float,
    ) -> None:
        with st.lock:
            # A later submission for this port may have overtaken ours: record only what the store
            # still wants, and let that later one record its own.
            if self.desired(switch, port) == want:
                self.store.record_applied(switch, port, want)
                st.dirty.discard(port)
        self.metrics.latency.labels(switch).observe(time.monotonic() - start)
        self.metrics.changes.labels(switch).inc(len(result.changes))
        self.metrics.connections.set(self.store.count())

    def _count_error(self, switch: str, e: BaseException) -> None:
        kind = type(e).__name__ if isinstance(e, ShimError) else "internal"
        self.metrics.errors.labels(switch, kind).inc()
        if isinstance(e, CircuitOpen):
            self.metrics.circuit_open.labels(switch).set(1)

    # -- audit and reconcile ----------------------------------------------------------------------
    def switches_to_check(self) -> list[str]:
        return [sw.name for sw in self.config.switches]

    def audit(
        self, switch: str, *, fix: bool = False, timeout: float | None = None
    ) -> list[PortReport]:
        """Compare every port of `switch` the shim manages or maps with what it should be; with
        `fix`, converge the ones that differ (drift) or carry service VLANs nobody uses."""
        st = self._switch(switch)
        timeout = timeout or self.config.server.request_timeout
        managed = {p for _, p in self.store.managed_ports(switch)}
        mapped = {e.port for e in self.config.port_map if e.switch == switch}
        ports = sorted(p for p in managed | mapped if not self.config.is_protected(switch, p))
        if not ports:
            self.metrics.drift.labels(switch).set(0)
            return []
        try:
            actual: dict[str, PortConfig] = st.worker.call(lambda d: d.read(ports)).result(timeout)
        except Exception as e:
            self._count_error(switch, e)
            return [
                PortReport(switch, p, "unreachable", None, None, 0, _one_line(e)) for p in ports
            ]
        reports: list[PortReport] = []
        repair: dict[str, PortConfig] = {}
        service_vlans = set(self._vlans.values())
        for p in ports:
            count = len(self.store.connections(switch=switch, port=p))
            have = actual.get(p)
            if p in managed:
                want = self.desired(switch, p)
                if same(have, want):
                    reports.append(PortReport(switch, p, "ok", want, have, count))
                    continue
                reports.append(PortReport(switch, p, "drift", want, have, count))
                repair[p] = want
            else:
                extra = portlogic.leftovers(have, service_vlans)
                if not extra:
                    reports.append(PortReport(switch, p, "ok", None, have, 0, "not in use"))
                    continue
                want = portlogic.released(p, self.config.switch(switch).parking_vlan)
                detail = f"carries service VLANs {_vlans(extra)} with no connection"
                reports.append(PortReport(switch, p, "leftover", want, have, 0, detail))
                repair[p] = want
        self.metrics.drift.labels(switch).set(len(repair))
        if not fix or not repair:
            return reports
        with st.lock:
            # recompute under the lock: a Request may have changed a port since the read
            repair = {
                p: (self.desired(switch, p) if p in managed else cfg) for p, cfg in repair.items()
            }
            fut = st.worker.submit(repair, time.monotonic() + timeout)
        try:
            fut.result()
        except Exception as e:
            self._count_error(switch, e)
            return [_replace(r, "failed", _one_line(e)) if r.port in repair else r for r in reports]
        with st.lock:
            for p, cfg in repair.items():
                if p in managed and self.desired(switch, p) == cfg:
                    self.store.record_applied(switch, p, cfg)
                    st.dirty.discard(p)
        self.metrics.repairs.labels(switch).inc(len(repair))
        self.metrics.drift.labels(switch).set(0)
        return [_replace(r, "fixed", r.detail) if r.port in repair else r for r in reports]

    def needs_reconcile(self) -> list[str]:
        """Switches with a port whose last transaction failed, or a new session since the last
        reconcile (a reconnect: whatever happened on the switch meanwhile is unknown)."""
        out = []
        with self._lock:
            states = dict(self._switches)
        for name, st in states.items():
            if st.dirty or st.worker.sessions > st.sessions_seen:
                out.append(name)
        return out

    def expire(self, now: float | None = None) -> list[Connection]:
        """Close every connection whose client stopped refreshing it; returns them."""
        gone = []
        for c in self.store.expired(time.time() if now is None else now):
            log.warning(
                "connection %s (%s on %s %s, node %s) expired: not refreshed; closing",
                c.id, c.service, c.switch, c.port, c.node,
            )  # fmt: skip
            try:
                self.close(c.id)
            except ShimError as e:  # the connection is gone from the store; reconcile repairs
                log.warning("closing expired %s: %s", c.id, e)
            gone.append(c)
        return gone

    def reconcile(self, switch: str) -> list[PortReport]:
        st = self._switch(switch)
        reports = self.audit(switch, fix=True)
        if all(r.status not in ("unreachable", "failed") for r in reports):
            st.sessions_seen = st.worker.sessions
        return reports


def _replace(r: PortReport, status: str, detail: str) -> PortReport:
    return PortReport(r.switch, r.port, status, r.desired, r.actual, r.connections, detail)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _vlans(vlans: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(vlans))
