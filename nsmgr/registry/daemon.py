"""`nsm-registry serve`: the two gRPC registries, the expiry sweeper, /metrics + /readyz + /healthz.

Ready (/readyz 200) once the gRPC address is bound and the store has answered the first expiry
sweep; with the Kubernetes backend that means the API server answered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent import futures

import grpc

from nicinventory.httpendpoints import MetricsServer
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
        self.http: MetricsServer | None = None
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
            host, port = host_port(self.metrics_address)
            self.http = MetricsServer(
                host or "0.0.0.0", port, self.is_ready, self.metrics.registry, name="http"
            )
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
