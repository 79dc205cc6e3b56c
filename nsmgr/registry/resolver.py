"""Finding another domain's registry: DNS SRV `_nsregistry._tcp.<domain>`, then A/AAAA.

- SRV records are ordered as RFC 2782 says: lowest priority first; within one priority a weighted
  random order (weight 0 records first in the running sum, so they are picked only rarely when
  others have weight). The order is drawn again on every call, so callers spread over the targets.
- Each target is resolved to its addresses (A, then AAAA); an IP literal as target is taken as is.
  A target of "." means "no service here" (RFC 2782): NotFound.
- Answers are cached for their TTL, clamped to [min_ttl, max_ttl]; NXDOMAIN and "no such record"
  for `negative_ttl`. A lookup that fails (timeout, SERVFAIL, refused) is retried `attempts` times
  with exponential backoff; if it still fails and an expired answer is at most `serve_stale`
  seconds old, that answer is used (RFC 8767), else ResolveError.
- The nameservers come from the config (`ip` or `ip:port`, `[v6]:port`; what the tests use to point
  at a dnsmasq on loopback), else from the system (/etc/resolv.conf).

`query` (how one question is asked), `clock`, `sleep` and `rng` are injectable for tests.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nsmgr.registry.errors import NotFound, ResolveError

log = logging.getLogger(__name__)

SRV_PREFIX = "_nsregistry._tcp."


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str  # without the trailing dot


@dataclass(frozen=True)
class Target:
    """One address of a domain's registry, in the order to try them."""

    host: str  # an IP address
    port: int
    name: str  # the SRV target it came from

    @property
    def address(self) -> str:
        """host:port as gRPC wants it ([v6]:port)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class NoSuchName(Exception):
    """NXDOMAIN: the name does not exist."""


class NoData(Exception):
    """The name exists but has no record of that type."""


class DnsFailure(Exception):
    """No usable answer: timeout, SERVFAIL, REFUSED, no nameserver. Worth retrying."""


# (absolute name, "SRV" | "A" | "AAAA") -> (record data, TTL in seconds)
QueryFn = Callable[[str, str], tuple[list[Any], int]]


def order_srv(records: Sequence[Srv], rng: random.Random) -> list[Srv]:
    """The order in which to try `records` (RFC 2782's selection algorithm)."""
    out: list[Srv] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    out.append(group.pop(i))
                    break
    return out


def parse_nameserver(text: str) -> tuple[str, int]:
    """`ip`, `ip:port` or `[v6]:port` -> (ip, port); ValueError otherwise."""
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not ip, ip:port or [ipv6]:port")
        port = int(rest[1:]) if rest else 53
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    ipaddress.ip_address(host)  # a nameserver is an address: resolving it would need DNS
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def dnspython_query(nameservers: Sequence[str], timeout: float) -> QueryFn:
    """A QueryFn asking `nameservers` (none: the system's) through dnspython, no cache of its own."""
    import dns.exception
    import dns.nameserver
    import dns.resolver

    try:
        res = dns.resolver.Resolver(configure=not nameservers)
    except dns.resolver.NoResolverConfiguration as e:
        raise ResolveError(f"no DNS nameserver configured ({e})") from e
    if nameservers:
        res.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
        ]
    res.timeout = timeout
    res.lifetime = timeout

    def query(name: str, rdtype: str) -> tuple[list[Any], int]:
        try:
            answer = res.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as e:
            raise NoSuchName(name) from e
        except dns.resolver.NoAnswer as e:
            raise NoData(name) from e
        except dns.exception.DNSException as e:
            raise DnsFailure(" ".join(str(e).split()) or type(e).__name__) from e
        assert answer.rrset is not None  # NoAnswer otherwise
        return list(answer), int(answer.rrset.ttl)

    return query


@dataclass
class _Entry:
    expires: float
    value: list[Any] | None  # None: a negative answer
    negative: type[Exception] | None = None


class Resolver:
    """Thread-safe; one per registry process (its cache is the point)."""

    def __init__(
        self,
        *,
        nameservers: Sequence[str] = (),
        timeout: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.1,
        min_ttl: float = 1.0,
        max_ttl: float = 300.0,
        negative_ttl: float = 30.0,
        serve_stale: float = 300.0,
        query: QueryFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_lookup: Callable[[str], None] | None = None,
    ) -> None:
        self._nameservers, self._timeout = list(nameservers), timeout
        self._query = query
        self.attempts, self.backoff = max(attempts, 1), backoff
        self.min_ttl, self.max_ttl, self.negative_ttl = min_ttl, max_ttl, negative_ttl
        self.serve_stale = serve_stale
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        self._on_lookup = on_lookup or (lambda _result: None)
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._lock = threading.Lock()

    # -- one question, cached -----------------------------------------------------------------
    def _ask(self, name: str, rdtype: str) -> tuple[list[Any], int]:
        if self._query is None:
            self._query = dnspython_query(self._nameservers, self._timeout)
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return self._query(name, rdtype)
            except DnsFailure as e:
                if attempt == self.attempts:
                    raise ResolveError(
                        f"DNS {rdtype} {name}: {e} (after {self.attempts} attempts)"
                    ) from e
                log.debug("DNS %s %s failed (%s); retrying in %.2f s", rdtype, name, e, delay)
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def lookup(self, name: str, rdtype: str) -> list[Any]:
        """The records of `name` (absolute, with the trailing dot); NoSuchName / NoData raised."""
        key, now = (name, rdtype), self._clock()
        with self._lock:
            entry = self._cache.get(key)
        if entry is not None and entry.expires > now:
            self._on_lookup("hit")
            if entry.negative is not None:
                raise entry.negative(name)
            return list(entry.value or [])
        try:
            records, ttl = self._ask(name, rdtype)
        except (NoSuchName, NoData) as e:
            self._on_lookup("negative")
            with self._lock:
                self._cache[key] = _Entry(now + self.negative_ttl, None, type(e))
            raise
        except ResolveError:
            if entry is not None and entry.value is not None:
                age = now - entry.expires
                if age <= self.serve_stale:
                    self._on_lookup("stale")
                    log.warning(
                        "DNS %s %s failed; using the answer expired %.0f s ago", rdtype, name, age
                    )
                    return list(entry.value)
            self._on_lookup("error")
            raise
        self._on_lookup("miss")
        ttl_s = min(max(float(ttl), self.min_ttl), self.max_ttl)
        with self._lock:
            self._cache[key] = _Entry(now + ttl_s, list(records))
        return list(records)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- what the proxy asks ----------------------------------------------------------------------
    def srv(self, domain: str) -> list[Srv]:
        """The SRV records of `domain`'s registry, unordered; NotFound when DNS says none."""
        name = f"{SRV_PREFIX}{domain}."
        try:
            records = self.lookup(name, "SRV")
        except (NoSuchName, NoData):
            raise NotFound(
                f"domain {domain!r} has no registry: no DNS SRV record {name[:-1]}"
            ) from None
        out = [
            Srv(int(r.priority), int(r.weight), int(r.port), str(r.target).rstrip("."))
            for r in records
        ]
        if out and all(s.target == "" for s in out):
            raise NotFound(f"domain {domain!r} says it has no registry (SRV target '.')")
        return [s for s in out if s.target]

    def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of `host` (an IP literal is its own address)."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                out.extend(str(r.address) for r in self.lookup(f"{host}.", rdtype))
            except (NoSuchName, NoData):
                continue
        return out

    def registry_targets(self, domain: str) -> list[Target]:
        """Every address of `domain`'s registry, in the order to try them."""
        targets: list[Target] = []
        errors: list[str] = []
        for s in order_srv(self.srv(domain), self._rng):
            try:
                addrs = self.addresses(s.target)
            except ResolveError as e:  # the next target may still resolve
                errors.append(str(e))
                continue
            targets.extend(Target(a, s.port, s.target) for a in addrs)
        if not targets:
            if errors:
                raise ResolveError(f"domain {domain!r}: no registry address: {errors[0]}")
            raise NotFound(f"domain {domain!r}: its registry's SRV targets have no address")
        return targets
