"""Prometheus metrics and the readiness endpoint (`metrics:` in the config)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from nicinventory.httpendpoints import MetricsServer
from nsmgr.errors import NsmgrError

OPERATIONS = Counter(
    "sriovnsm_nsmgr_operations", "Requests and closes, by result", ["op", "result"]
)
LATENCY = Histogram(
    "sriovnsm_nsmgr_operation_seconds",
    "Time of a request or close, journal and netlink included",
    ["op"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
CONNECTIONS = Gauge("sriovnsm_nsmgr_connections", "Connections, by state", ["state"])
RESTORES = Counter(
    "sriovnsm_nsmgr_restores",
    "VF restores outside a Close (replay, rollback, pod gone, retry), by result",
    ["trigger", "result"],
)
STATES = ("attached", "attaching", "detaching", "failed")


def observe(op: str, result: str, seconds: float) -> None:
    OPERATIONS.labels(op, result).inc()
    LATENCY.labels(op).observe(seconds)


def set_connections(counts: dict[str, int]) -> None:
    for state in STATES:
        CONNECTIONS.labels(state).set(counts.get(state, 0))


def listen_metrics(address: str, port: int, ready: Callable[[], bool]) -> MetricsServer:
    try:
        return MetricsServer(address, port, ready, name="nsmgr-metrics")
    except OSError as e:
        raise NsmgrError(f"metrics: cannot listen on {address}:{port}: {e.strerror}") from e
