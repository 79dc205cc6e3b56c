"""`torshim serve`: the gRPC NetworkService endpoint, /metrics + /readyz, and the reconcile loop.

Readiness: the store is open, the gRPC port is bound and the start-up reconcile of every switch has
run (a switch that cannot be reached is reported, retried, and does not hold readiness back: its
requests fail fast with UNAVAILABLE, which NSM's healing understands).

Reconcile runs at start, when a switch's session was re-made (a reconnect: the switch may have
changed meanwhile), when a port's last transaction failed, and every `reconcile_interval`.

With leader election (`torshim/leader.py`) all of that is the leader's: a standby binds gRPC
(answering UNAVAILABLE) and /metrics, and opens nothing else until the lease is its own.
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
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc
from torshim import nsm
from torshim.config import ShimConfig, host_port
from torshim.leader import LeaderElector
from torshim.metrics import Metrics
from torshim.registration import Registrar
from torshim.service import PortReport, Shim
from torshim.store import Store

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0  # seconds between looks for reconnects and failed ports (cheap: no I/O)


class HttpEndpoints:
    """GET /metrics (Prometheus text of the shim's registry), /readyz, /healthz."""

    def __init__(
        self, address: str, registry: CollectorRegistry, ready: Callable[[], bool]
    ) -> None:
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


class LeaderGate(pb_grpc.NetworkServiceServicer):
    """The NetworkService of the daemon: the shim's while it leads, UNAVAILABLE while it waits."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def _serving(self, op: str, context: Any) -> nsm.NetworkServiceServicer:
        servicer = self.daemon.servicer
        if servicer is None:
            self.daemon.metrics.requests.labels(op, "UNAVAILABLE").inc()
            holder = self.daemon.elector.holder if self.daemon.elector else None
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"standby: the leader is {holder}" if holder else "standby: no leader yet",
            )
        return servicer

    def Request(self, request: Any, context: Any) -> Any:
        return self._serving("Request", context).Request(request, context)

    def Close(self, request: Any, context: Any) -> Any:
        return self._serving("Close", context).Close(request, context)


class Daemon:
    """The shim's process. With an `elector` it starts as a standby (no store, no switch
    sessions, no reconcile, no registration; gRPC answers UNAVAILABLE, /readyz is 200) and turns
    leader when it takes the lease; losing the lease stops it (`lost`: the process exits non-zero
    and Kubernetes restarts it as a standby). Without one it leads from the start."""

    def __init__(
        self,
        config: ShimConfig,
        *,
        listen: str | None = None,
        metrics: str | None = None,
        elector: LeaderElector | None = None,
    ):
        self.config = config
        self.listen = listen or config.server.listen
        self.metrics_address = config.server.metrics if metrics is None else metrics
        self.elector = elector
        self.metrics = Metrics()
        self.leader_gauge = Gauge(
            "torshim_leader",
            "1 while this shim leads (serves and writes)",
            registry=self.metrics.registry,
        )
        self.store: Store | None = None
        self.shim: Shim | None = None
        self.servicer: nsm.NetworkServiceServicer | None = None
        self.ready = threading.Event()  # leading, and the start-up reconcile has run
        self.leading = threading.Event()
        self.lost = False  # leadership lost: the caller exits non-zero
        self._stop = threading.Event()
        self._stop_electing = threading.Event()
        self._lock = threading.Lock()
        self.grpc_port = 0
        self.http: HttpEndpoints | None = None
        self._server: grpc.Server | None = None
        self._loop: threading.Thread | None = None
        self._electing: threading.Thread | None = None
        self.registrar: Registrar | None = None
        self._retry_at: dict[str, tuple[float, int]] = {}  # switch -> (not before, failures)
        if elector is None:
            self._open()

    def _open(self) -> None:
        self.store = Store(self.config.store.path)
        self.shim = Shim(self.config, self.store, metrics=self.metrics)

    def is_ready(self) -> bool:
        """/readyz: the leader once its start-up reconcile has run; a standby at once (so a
        rollout of two replicas finishes while one waits)."""
        return self.ready.is_set() or (self.elector is not None and not self.leading.is_set())

    def start(self) -> None:
        """Bind and serve; leading (at once, or once the lease is ours) starts the rest."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="rpc"))
        pb_grpc.add_NetworkServiceServicer_to_server(LeaderGate(self), server)
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
            self.http = HttpEndpoints(self.metrics_address, self.metrics.registry, self.is_ready)
            self.http.start()
        if self.elector is None:
            self._lead()
        else:
            log.info(
                "standby on %s until lease %s is ours (as %s)",
                self.listen,
                self.elector.name,
                self.elector.identity,
            )
            self._electing = threading.Thread(target=self._elect_loop, name="elect", daemon=True)
            self._electing.start()

    def _lead(self) -> None:
        """Open the store (if not yet), serve, reconcile, register."""
        with self._lock:
            if self._stop.is_set():
                return
            if self.shim is None:
                self._open()
            assert self.shim is not None and self.store is not None
            self.servicer = nsm.NetworkServiceServicer(self.shim)
            self.leading.set()
            self.leader_gauge.set(1)
            self._loop = threading.Thread(
                target=self._reconcile_loop, name="reconcile", daemon=True
            )
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
                self.store.count(),
            )

    def _elect_loop(self) -> None:
        el = self.elector
        assert el is not None
        while not self._stop_electing.is_set():
            try:
                leading = el.step()
            except Exception:  # a bug, not the API (the adapter translates that): a leader stops
                log.exception("leader election failed")
                leading = False
            if leading and not self.leading.is_set():
                try:
                    self._lead()
                except Exception:  # the store cannot be opened: no leader worth keeping
                    log.exception("cannot start leading")
                    self.lost = True
                    self._stop.set()
                    return
            elif not leading and self.leading.is_set():
                self.lost = True  # stop writing now; the process exits and restarts as standby
                self.leader_gauge.set(0)
                self._stop.set()
                return
            wait = min(el.renew_every, el.time_left()) if leading else el.renew_every
            self._stop_electing.wait(wait)

    def stop(self, grace: float = 5.0) -> None:
        with self._lock:
            self._stop.set()
        if self.lost:
            grace = min(grace, 1.0)  # another shim may lead soon: stop writing first
        if self.registrar is not None:
            # first: callers should stop finding us before we go; after a lost lease the new
            # leader may have registered the same name already, which is not ours to remove
            self.registrar.stop(unregister=not self.lost)
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
        if self._loop is not None:
            self._loop.join(30)
        if self.http is not None:
            self.http.stop()
        if self.shim is not None:
            self.shim.stop()
        if self.store is not None:
            self.store.close()
        self._stop_electing.set()  # renewing until the writes are done
        if self._electing is not None:
            self._electing.join(30)
        if self.elector is not None and not self.lost:
            self.elector.release()
        self.leader_gauge.set(0)
        if self.listen.startswith("unix://"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen.removeprefix("unix://"))

    def wait(self) -> None:
        self._stop.wait()

    def _reconcile(self, switches: list[str], why: str) -> None:
        assert self.shim is not None
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
        assert self.shim is not None
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
