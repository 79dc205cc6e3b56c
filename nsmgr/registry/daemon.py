"""`nsm-registry serve`: the two gRPC registries, the expiry sweeper, /metrics + /readyz + /healthz.

Ready (/readyz 200) once the gRPC address is bound and the store has answered the first expiry
sweep; with the Kubernetes backend that means the API server answered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from nsmgr.registry.config import RegistryConfig, host_port
from nsmgr.registry.errors import RegistryError
from nsmgr.registry.metrics import Metrics
from nsmgr.registry.pnsmgr import ProxyNsmgr
from nsmgr.registry.proxy import Proxy
from nsmgr.registry.resolver import Resolver
from nsmgr.registry.server import Registry, add_to_server
from nsmgr.registry.store import Backend, SqliteBackend
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as npb_grpc

log = logging.getLogger(__name__)


def make_backend(cfg: RegistryConfig) -> Backend:
    if cfg.store.backend == "kubernetes":
        from nsmgr.registry.kube import CrdBackend, KubeAdapter  # kubernetes imports slowly

        k = cfg.store.kubernetes
        return CrdBackend(KubeAdapter(k.namespace, kubeconfig=k.kubeconfig, timeout=k.timeout))
    return SqliteBackend(cfg.store.path)


def make_resolver(cfg: RegistryConfig, metrics: Metrics) -> Resolver:
    d = cfg.dns
    return Resolver(
        nameservers=d.nameservers,
        timeout=d.timeout,
        attempts=d.attempts,
        backoff=d.backoff,
        min_ttl=d.min_ttl,
        max_ttl=d.max_ttl,
        negative_ttl=d.negative_ttl,
        serve_stale=d.serve_stale,
        on_lookup=lambda result: metrics.dns.labels(result).inc(),
    )


class HttpEndpoints:
    """GET /metrics (Prometheus text of `registry`), /readyz, /healthz."""

    def __init__(self, address: str, registry: CollectorRegistry, ready: Callable[[], bool]):
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
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="http")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Daemon:
    def __init__(
        self,
        config: RegistryConfig,
        *,
        listen: str | None = None,
        metrics: str | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self.listen = listen or config.server.listen
        self.metrics_address = config.server.metrics if metrics is None else metrics
        self.metrics = Metrics()
        self.backend = backend or make_backend(config)
        self.resolver = make_resolver(config, self.metrics)
        p = config.proxy
        self.proxy = (
            Proxy(self.resolver, pnsmgr_url=p.pnsmgr_url, timeout=p.timeout) if p.enabled else None
        )
        r = config.registration
        self.registry = Registry(
            self.backend,
            domain=config.domain,
            default_ttl=r.default_ttl,
            max_ttl=r.max_ttl,
            proxy=self.proxy,
            metrics=self.metrics,
        )
        self._stop = threading.Event()
        self.grpc_port = 0
        self.http: HttpEndpoints | None = None
        self._server: grpc.Server | None = None
        self.pnsmgr: ProxyNsmgr | None = None

    def start(self) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.server.max_workers, thread_name_prefix="rpc"
            )
        )
        add_to_server(self.registry, server)
        if self.proxy is not None:  # the pNSMgr: Request/Close for endpoints of other domains
            self.pnsmgr = ProxyNsmgr(self.proxy, timeout=self.config.proxy.timeout * 2)
            npb_grpc.add_NetworkServiceServicer_to_server(self.pnsmgr, server)
        if self.listen.startswith("unix://"):
            path = self.listen.removeprefix("unix://")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a socket left by a killed registry; binding would fail
        try:
            self.grpc_port = server.add_insecure_port(self.listen)
        except RuntimeError as e:  # grpc raises this when the address is taken
            raise OSError(f"cannot listen on {self.listen}: {e}") from e
        if self.grpc_port == 0 and not self.listen.startswith("unix://"):
            raise OSError(f"cannot listen on {self.listen}")
        server.start()
        self._server = server
        if self.metrics_address:
            self.http = HttpEndpoints(self.metrics_address, self.metrics.registry, self.is_ready)
            self.http.start()
        try:
            self.registry.sweep()  # the store answers: ready (else the sweeper retries)
        except RegistryError as e:
            log.warning("store not answering yet: %s", e)
        self.registry.start()
        state = "not answering"
        if self.registry.store_ok:
            services, endpoints = self.backend.counts(self.registry.clock())
            state = f"{services} services, {endpoints} live endpoints"
        log.info(
            "registry of domain %s serving on %s (%s store: %s)",
            self.config.domain,
            self.listen,
            self.config.store.backend,
            state,
        )

    def is_ready(self) -> bool:
        return self._server is not None and self.registry.store_ok

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.registry.stop()  # ends open watches, so the server's grace is not spent on them
        if self._server is not None:
            self._server.stop(grace).wait(grace + 1)
        if self.http is not None:
            self.http.stop()
        if self.pnsmgr is not None:
            self.pnsmgr.close()
        if self.proxy is not None:
            self.proxy.close()
        self.backend.close()
        if self.listen.startswith("unix://"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen.removeprefix("unix://"))

    def request_stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        self._stop.wait()
