"""The proxy NSMgr (pNSMgr): `networkservice.NetworkService` for connections to another domain.

The pNSR hands out remote endpoints with their `url` rewritten to the pNSMgr, so a Request for
`svc@other.org` arrives here. The pNSMgr finds the real endpoints the same way the pNSR does (the
domain's registry by DNS SRV, then Find there, `rewrite=False` for the real URLs), forwards the
Request with the name the remote domain knows (`svc`, no suffix), and answers with the remote
answer under the caller's name. The endpoint that answered is remembered per connection id, so
Close goes back to it; if it is gone, every endpoint of the service is told (Close is idempotent).

It runs on the registry's own gRPC server when the proxy is on: set `proxy.pnsmgr_url` to the
registry's URL.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
from google.protobuf import empty_pb2

from nsmgr.registry.errors import RegistryError
from nsmgr.registry.names import grpc_target
from nsmgr.registry.proxy import Proxy
from sriov_nsm_wire.networkservice import networkservice_pb2 as npb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as npb_grpc
from sriov_nsm_wire.registry import registry_pb2 as rpb

log = logging.getLogger(__name__)

UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ProxyNsmgr(npb_grpc.NetworkServiceServicer):
    def __init__(self, proxy: Proxy, *, timeout: float = 10.0) -> None:
        self.proxy = proxy
        self.timeout = timeout
        self._lock = threading.Lock()
        self._served: dict[str, str] = {}  # connection id -> the remote endpoint's url
        self._channels: dict[str, grpc.Channel] = {}

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()

    def _stub(self, url: str) -> npb_grpc.NetworkServiceStub:
        with self._lock:
            ch = self._channels.get(url)
            if ch is None:
                ch = self._channels[url] = grpc.insecure_channel(grpc_target(url))
        return npb_grpc.NetworkServiceStub(ch)

    @staticmethod
    def _split(conn: npb.Connection, context: Any) -> tuple[str, str, str]:
        """(service as the remote domain knows it, domain, wanted endpoint name or "")."""
        name, _, domain = conn.network_service.partition("@")
        if not name or not domain:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the pNSMgr forwards services of other domains only, not {conn.network_service!r}",
            )
        nse, _, nse_domain = conn.network_service_endpoint_name.partition("@")
        return name, domain, nse if nse_domain == domain else ""

    def _endpoints(self, name: str, domain: str, nse: str, context: Any) -> list[str]:
        query = rpb.NetworkServiceEndpointQuery(
            network_service_endpoint=rpb.NetworkServiceEndpoint(
                name=nse, network_service_names=[name]
            )
        )
        try:
            found = list(self.proxy.find_endpoints(domain, query, rewrite=False))
        except RegistryError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{domain}: {' '.join(str(e).split())}")
        urls = [r.network_service_endpoint.url for r in found if not r.deleted]
        if not urls:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no endpoint of {name} in domain {domain}")
        return urls

    def Request(self, request: npb.NetworkServiceRequest, context: Any) -> npb.Connection:
        asked = request.connection.network_service
        name, domain, nse = self._split(request.connection, context)
        urls = self._endpoints(name, domain, nse, context)
        with self._lock:
            known = self._served.get(request.connection.id)
        if known in urls:  # a refresh goes where the connection is
            urls.remove(known)
            urls.insert(0, known)
        forward = npb.NetworkServiceRequest()
        forward.CopyFrom(request)
        forward.connection.network_service = name
        forward.connection.network_service_endpoint_name = ""
        left = context.time_remaining()
        timeout = self.timeout if left is None else max(0.001, min(self.timeout, left - 0.05))
        last = None
        for url in urls:
            try:
                answer = self._stub(url).Request(forward, timeout=timeout)
            except grpc.RpcError as e:
                if e.code() not in UNREACHABLE:
                    context.abort(e.code(), e.details() or e.code().name)
                log.warning("endpoint %s of %s@%s unreachable: %s", url, name, domain, e.code())
                last = e
                continue
            with self._lock:
                self._served[request.connection.id] = url
            answer.network_service = asked
            if answer.network_service_endpoint_name:
                answer.network_service_endpoint_name += f"@{domain}"
            return answer
        context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"no endpoint of {name}@{domain} answered ({last.code().name if last else '-'})",
        )
        raise AssertionError("unreachable")

    def Close(self, request: npb.Connection, context: Any) -> empty_pb2.Empty:
        name, domain, nse = self._split(request, context)
        with self._lock:
            known = self._served.pop(request.id, None)
        urls = [known] if known else self._endpoints(name, domain, nse, context)
        forward = npb.Connection()
        forward.CopyFrom(request)
        forward.network_service = name
        forward.network_service_endpoint_name = ""
        for url in urls:
            try:
                self._stub(url).Close(forward, timeout=self.timeout)
            except grpc.RpcError as e:
                log.warning("Close %s at %s: %s", request.id, url, e.code().name)
        return empty_pb2.Empty()
