"""The shim registers itself in its domain's Network Service Registry as the endpoint of its
services, and keeps that registration alive.

Registrations expire unless refreshed (NSM's rule), so a shim that died disappears from Find by
itself. The refresh runs at a third of the granted lifetime, so two lost refreshes in a row still
leave it registered; a registry that is down is retried with backoff and re-registered when it is
back (a restarted registry with an in-memory store has forgotten us).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import timestamp_pb2

from sriov_nsm_wire.registry import registry_pb2 as rpb
from sriov_nsm_wire.registry import registry_pb2_grpc as rpb_grpc

log = logging.getLogger(__name__)


def grpc_target(url: str) -> str:
    """NSM URLs (`tcp://host:port`, `unix:///path`) as a gRPC channel target."""
    if url.startswith("tcp://"):
        return url.removeprefix("tcp://")
    return url


@dataclass
class Registrar:
    registry_url: str
    name: str
    services: list[str]
    url: str  # where callers reach this shim (tcp://host:port or unix:///path)
    ttl: float = 60.0
    labels: dict[str, str] = field(default_factory=dict)
    rpc_timeout: float = 5.0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registered = threading.Event()
        self.refreshes = 0
        self.expires_at = 0.0  # wall clock, as granted by the registry

    def endpoint(self) -> rpb.NetworkServiceEndpoint:
        expiry = timestamp_pb2.Timestamp()
        expiry.FromNanoseconds(int((time.time() + self.ttl) * 1e9))
        return rpb.NetworkServiceEndpoint(
            name=self.name,
            network_service_names=self.services,
            network_service_labels={
                s: rpb.NetworkServiceLabels(labels=self.labels) for s in self.services
            },
            url=self.url,
            expiration_time=expiry,
        )

    def register_once(self) -> float:
        """Register (or refresh) now; returns the seconds until the granted expiry."""
        with grpc.insecure_channel(grpc_target(self.registry_url)) as ch:
            stub = rpb_grpc.NetworkServiceEndpointRegistryStub(ch)
            got = stub.Register(self.endpoint(), timeout=self.rpc_timeout)
        granted = (
            got.expiration_time.ToNanoseconds() / 1e9 if got.HasField("expiration_time") else 0
        )
        self.expires_at = granted or time.time() + self.ttl
        self.refreshes += 1
        self.registered.set()
        return max(1.0, self.expires_at - time.time())

    def unregister(self) -> None:
        with grpc.insecure_channel(grpc_target(self.registry_url)) as ch:
            stub = rpb_grpc.NetworkServiceEndpointRegistryStub(ch)
            stub.Unregister(rpb.NetworkServiceEndpoint(name=self.name), timeout=self.rpc_timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="registrar", daemon=True)
        self._thread.start()

    def stop(self, unregister: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if unregister and self.registered.is_set():
            try:
                self.unregister()
            except grpc.RpcError as e:
                log.warning("unregister from %s failed: %s", self.registry_url, e.details())

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                left = self.register_once()
            except grpc.RpcError as e:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning(
                    "registering %s at %s failed (%s); retry in %.1f s",
                    self.name,
                    self.registry_url,
                    " ".join((e.details() or str(e.code())).split()),
                    delay,
                )
                self._stop.wait(delay)
                continue
            if failures:
                log.info("registered %s at %s again", self.name, self.registry_url)
            failures = 0
            self._stop.wait(left / 3)
