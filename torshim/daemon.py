"""`torshim serve`: the gRPC NetworkService endpoint, /metrics + /readyz, and the reconcile loop.

Readiness: the store is open, the gRPC port is bound and the start-up reconcile of every switch has
run (a switch that cannot be reached is reported, retried, and does not hold readiness back: its
requests fail fast with UNAVAILABLE, which NSM's healing understands).

Reconcile runs at start, when a switch's session was re-made (a reconnect: the switch may have
changed meanwhile), when a port's last transaction failed, and every `reconcile_interval`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from torshim import nsm
from torshim.config import ShimConfig, host_port
from torshim.registration import Registrar
from torshim.service import PortReport, Shim
from torshim.store import Store

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between looks for reconnects and failed ports (cheap: no I/O)


class HttpEndpoints:
    """GET /metrics (Prometheus text of the shim's registry), /readyz, /healthz."""

    def __init__(self, address: str, shim: Shim, ready: Callable[[], bool]) -> None:
        registry = shim.metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path in ("/readyz", "/healthz"):
                    ok = self.path == "/healthz" or ready()
                    body = b"ok\n" if ok else b"not ready\n"
                    ctype, code = "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scraped every few seconds: stay quiet
                pass

        host, port = host_port(address)
        self.httpd = ThreadingHTTPServer((host or "0.0.0.0", port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="http")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Daemon:
    def __init__(
        self, config: ShimConfig, *, listen: str | None = None, metrics: str | None = None
    ):
        self.config = config
        self.listen = listen or config.server.listen
        self.metrics_address = config.server.metrics if metrics is None else metrics
        self.store = Store(config.store.path)
        self.shim = Shim(config, self.store)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self.grpc_port = 0
        self.http: HttpEndpoints | None = None
        self._server: grpc.Server | None = None
        self._loop: threading.Thread | None = None
        self.registrar: Registrar | None = None
        self._retry_at: dict[str, tuple[float, int]] = {}  # switch -> (not before, failures)

    def start(self) -> None:
        """Bind and serve; the start-up reconcile runs in the background loop."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="rpc"))
        nsm.add_to_server(self.shim, server)
        if self.listen.startswith("unix://"):
            path = self.listen.removeprefix("unix://")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)  # a socket left by a killed shim; binding would fail
        self.grpc_port = server.add_insecure_port(self.listen)
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        server.start()
        self._server = server
        if self.metrics_address:
            self.http = HttpEndpoints(self.metrics_address, self.shim, self.ready.is_set)
            self.http.start()
        self._loop = threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True)
        self._loop.start()
        reg = self.config.registry
        if reg.url:
            advertise = reg.advertise or _as_url(self.listen, self.grpc_port)
            self.registrar = Registrar(
                reg.url,
                self.config.server.name,
                [s.name for s in self.config.services],  # names are domain-local in a registry
                advertise,
                ttl=reg.ttl,
            )
            self.registrar.start()
        log.info(
            "serving NetworkService on %s (%d switches, %d services, %d live connections)",
            self.listen,
            len(self.config.switches),
            len(self.config.services),
            len(self.store.connections()),
        )

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        if self.registrar is not None:
            self.registrar.stop()  # first: callers should stop finding us before we go
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
        if self._loop is not None:
            self._loop.join(30)
        if self.http is not None:
            self.http.stop()
        self.shim.stop()
        self.store.close()
        if self.listen.startswith("unix://"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen.removeprefix("unix://"))

    def wait(self) -> None:
        self._stop.wait()

    def _reconcile(self, switches: list[str], why: str) -> None:
        for name in switches:
            if self._stop.is_set():
                return
            not_before, failures = self._retry_at.get(name, (0.0, 0))
            if time.monotonic() < not_before:
                continue  # an unreachable switch is retried with backoff, not every second
            reports = self.shim.reconcile(name)
            _log_reports(name, why, reports)
            if any(r.status in ("unreachable", "failed") for r in reports):
                delay = min(60.0, 2.0**failures)
                self._retry_at[name] = (time.monotonic() + delay, failures + 1)
            else:
                self._retry_at.pop(name, None)

    def _reconcile_loop(self) -> None:
        self._reconcile(self.shim.switches_to_check(), "start")
        self.ready.set()
        interval = self.config.server.reconcile_interval
        last = time.monotonic()
        while not self._stop.wait(CHECK_EVERY):
            if interval and time.monotonic() - last >= interval:
                last = time.monotonic()
                self._reconcile(self.shim.switches_to_check(), "periodic")
            else:
                self._reconcile(self.shim.needs_reconcile(), "reconnect or failed change")
            try:
                self.shim.expire()
            except Exception:  # the store failing: logged, the next tick retries
                log.exception("expiring connections failed")


def _as_url(listen: str, port: int) -> str:
    """The listen address as an NSM URL, with the port actually bound (for `:0`)."""
    if listen.startswith("unix://"):
        return listen
    host, _ = host_port(listen)
    return f"tcp://{host or '127.0.0.1'}:{port}"


def _log_reports(switch: str, why: str, reports: list[PortReport]) -> None:
    for r in reports:
        if r.status == "fixed":
            log.warning("reconcile (%s): %s %s repaired %s", why, switch, r.port, r.detail)
        elif r.status in ("unreachable", "failed"):
            log.warning("reconcile (%s): %s %s %s: %s", why, switch, r.port, r.status, r.detail)
