"""Prometheus metrics and the readiness endpoint (`metrics:` in the config)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

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


class MetricsServer:
    """GET /metrics (Prometheus text), /readyz (200 once the journal is replayed and the socket
    serves), /healthz (200 while the process serves)."""

    def __init__(self, address: str, port: int, ready: Callable[[], bool]) -> None:
        ready_fn = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
                elif self.path in ("/readyz", "/healthz"):
                    ok = self.path == "/healthz" or ready_fn()
                    body, ctype = (b"ok\n" if ok else b"not ready\n"), "text/plain"
                    code = 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scraped every few seconds: quiet
                pass

        try:
            self.httpd = ThreadingHTTPServer((address, port), Handler)
        except OSError as e:
            raise NsmgrError(f"metrics: cannot listen on {address}:{port}: {e.strerror}") from e
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, daemon=True, name="nsmgr-metrics"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
