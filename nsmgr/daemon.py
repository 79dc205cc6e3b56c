"""`nsmgr serve`: the agent, its gRPC socket, metrics and readiness, periodic reconcile, and a
hook for the pod integration, started together and stopped together."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from nsmgr.agent import Agent
from nsmgr.config import NsmgrConfig
from nsmgr.metrics import MetricsServer, listen_metrics
from nsmgr.server import NsmServer

log = logging.getLogger("nsmgr")


class Stoppable(Protocol):
    def stop(self) -> None: ...


# The pod integration: started once the agent has replayed its journal and the socket serves,
# with the agent (a model.ConnectionAgent) and the whole config (its `pods:` block is
# `cfg.pods`, a validated PodsConfig). What it returns is stopped first on shutdown.
PodHook = Callable[[Agent, NsmgrConfig], Stoppable | None]


def _release_startup_garbage() -> None:
    """Give start-up's freed heap (pydantic models, grpc's import) back to the OS, so the
    resident size of a long-running agent is what it uses."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def close_expired(agent: Agent) -> list[str]:
    """Close the connections whose endpoint already dropped them (not refreshed in time): the
    network side is gone, so the VF goes back too; the pod integration asks again."""
    expired = getattr(agent.endpoint, "expired", None)
    closed = []
    for cid in expired() if expired is not None else []:
        log.warning("connection %s expired at its endpoint (not refreshed in time); closing", cid)
        try:
            agent.close(cid)
            closed.append(cid)
        except Exception:  # logged; the next pass tries again
            log.exception("closing expired connection %s failed", cid)
    return closed


def serve(
    cfg: NsmgrConfig,
    *,
    pods: PodHook | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run until `stop` is set (the CLI sets it on SIGTERM/SIGINT). Raises NsmgrError (config,
    state dir, socket) before serving; once serving, errors of one VF are logged, not fatal."""
    stop = stop or threading.Event()
    agent = Agent(cfg)
    server: NsmServer | None = None
    metrics_server: MetricsServer | None = None
    integration: Stoppable | None = None
    serving = threading.Event()
    try:
        if cfg.metrics.port:  # first: /healthz answers during a long replay, /readyz says 503
            metrics_server = listen_metrics(
                cfg.metrics.address, cfg.metrics.port, lambda: agent.ready and serving.is_set()
            )
            metrics_server.start()
        agent.start()  # replay + reconcile: before the socket, so no request races the replay
        server = NsmServer(agent, cfg.socket, cfg.workers, cfg.node_name)
        server.start()
        serving.set()
        if pods is not None:
            integration = pods(agent, cfg)
        _release_startup_garbage()
        log.info(
            "serving %s on %s (node %s, %d connections, pf_side %s)",
            "NetworkService and MonitorConnection", cfg.socket, cfg.node_name,
            len(agent.connections()), cfg.pf_side,
        )  # fmt: skip
        refresh = getattr(agent.endpoint, "refresh", None)  # remote endpoints only
        period = min(cfg.reconcile_period, cfg.registry.refresh_period if refresh else 1e9)
        last_reconcile = last_refresh = time.monotonic()
        while not stop.wait(period):
            now = time.monotonic()
            try:
                if now - last_reconcile >= cfg.reconcile_period - 0.01:
                    last_reconcile = now
                    agent.reconcile()
                if refresh is not None and now - last_refresh >= cfg.registry.refresh_period - 0.01:
                    last_refresh = now
                    refresh()  # NSM's refresh: re-establishes connections after a restart
                    close_expired(agent)
            except Exception:  # one bad pass must not end the agent; the next one retries
                log.exception("reconcile or refresh failed")
    finally:
        serving.clear()
        if integration is not None:
            try:
                integration.stop()
            except Exception:
                log.exception("stopping the pod integration failed")
        if server is not None:
            server.stop()
        if metrics_server is not None:
            metrics_server.stop()
        agent.stop()
        log.info("stopped; connections stay recorded for the next start")
    return 0
