"""Prometheus metrics and the readiness endpoint (`--metrics-port`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from deviceplugin.types import DeviceState

DEVICES = Gauge("sriovnsm_dp_devices", "Devices a pool reports, by health", ["resource", "health"])
ALLOCATIONS = Counter(
    "sriovnsm_dp_allocations", "Allocate calls, by result", ["resource", "result"]
)
REGISTERED = Gauge(
    "sriovnsm_dp_registered", "1 when the pool is registered with kubelet", ["resource"]
)
CONFIG_RELOADS = Counter("sriovnsm_dp_config_reloads", "Config reloads, by result", ["result"])


def set_devices(resource: str, states: list[DeviceState]) -> None:
    healthy = sum(1 for s in states if s.healthy)
    DEVICES.labels(resource, "Healthy").set(healthy)
    DEVICES.labels(resource, "Unhealthy").set(len(states) - healthy)


def forget(resource: str) -> None:
    """A pool removed from the config takes its series with it."""
    with contextlib.suppress(KeyError):
        DEVICES.remove(resource, "Healthy")
    with contextlib.suppress(KeyError):
        DEVICES.remove(resource, "Unhealthy")
    with contextlib.suppress(KeyError):
        REGISTERED.remove(resource)


class MetricsServer:
    """GET /metrics (Prometheus text), /readyz (200 once every pool is registered), /healthz."""

    def __init__(self, address: str, port: int, ready: Callable[[], bool]) -> None:
        ready_fn = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
                elif self.path in ("/readyz", "/healthz"):
                    ok = self.path == "/healthz" or ready_fn()
                    body, ctype, code = (
                        (b"ok\n" if ok else b"not ready\n"),
                        "text/plain",
                        200 if ok else 503,
                    )
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds: stay quiet
                pass

        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, daemon=True, name="metrics"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
