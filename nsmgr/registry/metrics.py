"""Prometheus metrics of the registry, in a registry of its own (several in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# A local Find is a SQLite index lookup (tens of µs); a remote one adds DNS and a gRPC round trip.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "nsm_registry_requests",
            "Registry calls by registry (ns, nse), method and gRPC status",
            ["registry", "method", "code"],
            registry=r,
        )
        self.find_seconds = Histogram(
            "nsm_registry_find_seconds",
            "Time to answer a Find without watch, local or forwarded to another domain",
            ["scope"],
            buckets=BUCKETS,
            registry=r,
        )
        self.services = Gauge("nsm_registry_services", "Registered network services", registry=r)
        self.endpoints = Gauge("nsm_registry_endpoints", "Live endpoints", registry=r)
        self.expired = Counter(
            "nsm_registry_expired", "Endpoints removed because they were not refreshed", registry=r
        )
        self.watches = Gauge("nsm_registry_watches", "Open Find streams with watch", registry=r)
        self.dns = Counter(
            "nsm_registry_dns_lookups",
            "DNS questions by result (hit, miss, negative, stale, error)",
            ["result"],
            registry=r,
        )
