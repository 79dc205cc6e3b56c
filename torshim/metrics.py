"""Prometheus metrics of the shim, in a registry of its own (two shims in one test process, fine)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Port changes take milliseconds over a warm NETCONF session and seconds over a cold SSH login.
BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "torshim_requests",
            "NetworkService calls by operation and result",
            ["op", "code"],
            registry=r,
        )
        self.changes = Counter(
            "torshim_port_changes", "Port changes committed, per switch", ["switch"], registry=r
        )
        self.latency = Histogram(
            "torshim_switch_seconds",
            "Time from submitting a port config to its verified commit, per switch",
            ["switch"],
            buckets=BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "torshim_switch_errors",
            "Failed switch transactions, per switch and kind",
            ["switch", "kind"],
            registry=r,
        )
        self.drift = Gauge(
            "torshim_drift_ports",
            "Ports found differing from desired at the last audit",
            ["switch"],
            registry=r,
        )
        self.repairs = Counter(
            "torshim_drift_repaired", "Ports repaired by reconcile", ["switch"], registry=r
        )
        self.connections = Gauge("torshim_connections", "Live connections", registry=r)
        self.circuit_open = Gauge(
            "torshim_circuit_open",
            "1 while the switch's circuit breaker is open",
            ["switch"],
            registry=r,
        )
