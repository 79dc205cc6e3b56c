"""Leader election on a coordination.k8s.io/v1 Lease: two shims, one writer.

The store and the switches take one writer, so only the holder of the Lease serves; the other
replica waits as a standby. The rules, over any `Leases` (the API server through `LeaseAdapter`,
or `FakeLeases` in tests) and an injectable wall clock (lease times are shared between pods):

- A lease that is absent, expired (`renewTime + leaseDuration < now`), without holder, or already
  ours is taken: created, or replaced with the `resourceVersion` just read, so of two takers one
  gets 409 Conflict and stays standby.
- The leader renews every `renew_every` seconds. It counts as leader only until `renew_deadline`
  (`duration - renew_every`) after its last successful renewal, which is before anyone else may
  take the lease (`duration`): a leader cut off from the API server stops writing before a
  standby starts. A conflict whose re-read shows another holder ends leadership at once.
- `release()` (a clean stop) empties the holder so the standby takes over without waiting for
  the lease to expire.

The only code that knows the kubernetes client is `LeaseAdapter`, and it makes three calls:
read, create and replace of one namespaced Lease (the Role grants get, create, update).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from torshim.errors import ConfigError, ShimError

log = logging.getLogger(__name__)


class LeaseError(ShimError):
    """The Lease could not be read or written (API server unreachable, refused, timed out)."""


class LeaseConflict(LeaseError):
    """409: the Lease changed since it was read, or exists already; someone else wrote first."""


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as the election uses it; times are Unix seconds (wall clock)."""

    holder: str | None
    acquire_time: float | None
    renew_time: float | None
    duration: int
    transitions: int = 0
    resource_version: str | None = None

    def expired(self, now: float) -> bool:
        return self.renew_time is None or self.renew_time + self.duration < now


class Leases(Protocol):
    """One namespace's Leases: get, create and replace (optimistic, by resource_version)."""

    def get(self, name: str) -> LeaseRecord | None:
        """None when there is no such Lease (404)."""
        ...

    def create(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        """The stored record with its resource_version; LeaseConflict when it exists."""
        ...

    def replace(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        """LeaseConflict unless rec.resource_version is the stored one."""
        ...


# -- the API server -------------------------------------------------------------------------------


def _to_time(t: float | None) -> dt.datetime | None:
    if t is None:
        return None
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    # The client writes datetimes with isoformat(), which drops a zero fraction; a MicroTime
    # without its six digits is refused by the API server. One microsecond is no harm.
    return d if d.microsecond else d.replace(microsecond=1)


def _from_time(d: dt.datetime | None) -> float | None:
    if d is None:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).timestamp()


class LeaseAdapter:
    """`Leases` over the API server (kubernetes' CoordinationV1Api; `api` injectable)."""

    def __init__(
        self,
        namespace: str,
        *,
        api: Any = None,
        kubeconfig: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self.api = api if api is not None else _coordination_api(kubeconfig)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=self.timeout, **kw)
        except ApiException as e:
            if e.status == 404:
                return None
            if e.status == 409:
                raise LeaseConflict(f"{what}: conflict") from e
            raise LeaseError(f"{what}: HTTP {e.status} {e.reason}") from e
        except Exception as e:  # urllib3's connection errors, timeouts: the API is not there
            raise LeaseError(f"{what}: {' '.join(str(e).split()) or type(e).__name__}") from e

    def get(self, name: str) -> LeaseRecord | None:
        got = self._call(
            f"get lease {self.namespace}/{name}",
            self.api.read_namespaced_lease,
            name,
            self.namespace,
        )
        return None if got is None else _record(got)

    def create(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        what = f"create lease {self.namespace}/{name}"
        got = self._call(
            what, self.api.create_namespaced_lease, self.namespace, self._body(name, rec)
        )
        if got is None:  # 404: the namespace is gone
            raise LeaseError(f"{what}: namespace not found")
        return _record(got)

    def replace(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        what = f"update lease {self.namespace}/{name}"
        got = self._call(
            what, self.api.replace_namespaced_lease, name, self.namespace, self._body(name, rec)
        )
        if got is None:  # deleted since it was read: someone else's doing, as a conflict is
            raise LeaseConflict(f"{what}: gone")
        return _record(got)

    def _body(self, name: str, rec: LeaseRecord) -> Any:
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta

        return V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=V1ObjectMeta(
                name=name, namespace=self.namespace, resource_version=rec.resource_version
            ),
            spec=V1LeaseSpec(
                holder_identity=rec.holder,
                acquire_time=_to_time(rec.acquire_time),
                renew_time=_to_time(rec.renew_time),
                lease_duration_seconds=rec.duration,
                lease_transitions=rec.transitions,
            ),
        )


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(
        holder=(spec.holder_identity or None) if spec else None,
        acquire_time=_from_time(spec.acquire_time) if spec else None,
        renew_time=_from_time(spec.renew_time) if spec else None,
        duration=(spec.lease_duration_seconds or 0) if spec else 0,
        transitions=(spec.lease_transitions or 0) if spec else 0,
        resource_version=lease.metadata.resource_version,
    )


def _coordination_api(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()  # our own, not the process-wide default
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except (config.ConfigException, OSError) as e:
        where = kubeconfig or "in-cluster credentials (outside a pod: --kubeconfig FILE)"
        raise ConfigError(f"Kubernetes credentials, {where}: {' '.join(str(e).split())}") from e
    return client.CoordinationV1Api(client.ApiClient(cfg))


# -- in memory ------------------------------------------------------------------------------------


class FakeLeases:
    """`Leases` in memory with the API server's rules: a resourceVersion per write, 409 on a
    stale one or on creating what exists. `down` makes every call fail as an unreachable API."""

    def __init__(self) -> None:
        self.objects: dict[str, LeaseRecord] = {}
        self.version = 0
        self.down = False
        self.calls: list[tuple[str, str]] = []

    def _check(self, verb: str, name: str) -> None:
        self.calls.append((verb, name))
        if self.down:
            raise LeaseError(f"{verb} lease {name}: connection refused")

    def _store(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        self.version += 1
        rec = dataclasses.replace(rec, resource_version=str(self.version))
        self.objects[name] = rec
        return rec

    def get(self, name: str) -> LeaseRecord | None:
        self._check("get", name)
        return self.objects.get(name)

    def create(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        self._check("create", name)
        if name in self.objects:
            raise LeaseConflict(f"create lease {name}: already exists")
        return self._store(name, rec)

    def replace(self, name: str, rec: LeaseRecord) -> LeaseRecord:
        self._check("update", name)
        have = self.objects.get(name)
        if have is None or rec.resource_version != have.resource_version:
            raise LeaseConflict(f"update lease {name}: the object has been modified")
        return self._store(name, rec)


# -- the election ---------------------------------------------------------------------------------


def check_timing(duration: int, renew_every: float) -> None:
    """A renewal must fit in the lease more than once, or leadership lapses between renewals."""
    if duration < 1 or not 0 < renew_every < duration:
        raise ConfigError(
            f"leader election: --renew-every ({renew_every:g} s) must be above 0 and below "
            f"--lease-duration ({duration} s)"
        )


class LeaderElector:
    """Pure election logic: `step()` makes one attempt to take or renew the lease; the caller
    runs it every `renew_every` seconds and acts on `leading` and `lost`."""

    def __init__(
        self,
        leases: Leases,
        name: str,
        identity: str,
        *,
        duration: int = 15,
        renew_every: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not identity:
            raise ConfigError("leader election: the holder identity is empty")
        check_timing(duration, renew_every)
        self.leases = leases
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_every = renew_every
        self.renew_deadline = duration - renew_every
        self.clock = clock
        self.holder: str | None = None  # as last seen
        self.lost = False  # was leader, is no more
        self._leader = False
        self._renewed = 0.0  # the renewTime of our last successful write

    @property
    def leading(self) -> bool:
        """True only while the last renewal is younger than the renew deadline."""
        return self._leader and self.clock() < self._renewed + self.renew_deadline

    def time_left(self) -> float:
        """Seconds until leadership lapses without a renewal (0 when not leading)."""
        return max(0.0, self._renewed + self.renew_deadline - self.clock()) if self._leader else 0.0

    def step(self) -> bool:
        """Take or renew the lease once; returns `leading`."""
        now = self.clock()
        try:
            rec = self.leases.get(self.name)
            if rec is None:
                self.leases.create(self.name, self._ours(None, now))
            elif rec.holder and rec.holder != self.identity and not rec.expired(now):
                self.holder = rec.holder
                return self._lose(f"{rec.holder} holds the lease")
            else:
                self.leases.replace(self.name, self._ours(rec, now))
        except LeaseConflict:
            other = self._reread()
            if other is not None and other != self.identity:
                self.holder = other
                return self._lose(f"{other} holds the lease")
            return self._check_lapse("a write conflicted")
        except LeaseError as e:
            return self._check_lapse(str(e))
        if not self._leader:
            log.info("leader election: %s now holds lease %s", self.identity, self.name)
        self._leader, self._renewed, self.holder = True, now, self.identity
        self.lost = False
        return self.leading

    def release(self) -> None:
        """Give the lease up (a clean stop): the standby takes it at its next try."""
        if not self._leader:
            return
        self._leader = False
        try:
            rec = self.leases.get(self.name)
            if rec is not None and rec.holder == self.identity:
                now = self.clock()
                self.leases.replace(
                    self.name, dataclasses.replace(rec, holder=None, renew_time=now, duration=1)
                )
                log.info("leader election: released lease %s", self.name)
        except LeaseError as e:  # it expires by itself
            log.warning("leader election: releasing lease %s failed: %s", self.name, e)

    def _ours(self, rec: LeaseRecord | None, now: float) -> LeaseRecord:
        if rec is None:
            return LeaseRecord(self.identity, now, now, self.duration)
        if rec.holder == self.identity:  # a renewal (or our own lease after a restart)
            return dataclasses.replace(rec, renew_time=now, duration=self.duration)
        return LeaseRecord(
            self.identity,
            now,
            now,
            self.duration,
            rec.transitions + 1,
            rec.resource_version,
        )

    def _reread(self) -> str | None:
        try:
            rec = self.leases.get(self.name)
        except LeaseError:
            return None
        return None if rec is None else rec.holder

    def _check_lapse(self, why: str) -> bool:
        if self._leader and not self.leading:
            return self._lose(f"no renewal for {self.renew_deadline:g} s ({why})")
        if self._leader:
            log.warning("leader election: renewing lease %s failed: %s", self.name, why)
        return self.leading

    def _lose(self, why: str) -> bool:
        if self._leader:
            log.error("leader election: %s lost lease %s: %s", self.identity, self.name, why)
            self.lost = True
        self._leader = False
        return False
