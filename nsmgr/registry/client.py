"""A small synchronous client of the registry, for nsmgr and the `nsm-registry` CLI.

    with RegistryClient("10.0.0.2:5002") as reg:                 # or "unix:///run/x.sock"
        for nse in reg.find_endpoints(service="myns.example.com@dc.example.org"):
            ...  # nse.url: tcp://host:port or unix:///path; remote ones name the pNSMgr

Errors come back as CallError with the gRPC status name in `code` and the registry's one-line
detail as the message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from nsmgr.registry.errors import RegistryError
from sriov_nsm_wire.registry import registry_pb2 as pb
from sriov_nsm_wire.registry import registry_pb2_grpc as pb_grpc


class CallError(RegistryError):
    """A registry call failed; `code` is the gRPC status name (UNAVAILABLE, INVALID_ARGUMENT...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _error(address: str, e: grpc.RpcError) -> CallError:
    code = e.code()
    detail = " ".join(str(e.details() or "").split())
    if code == grpc.StatusCode.UNAVAILABLE and not detail.startswith(("registry of", "DNS")):
        detail = f"cannot reach the registry at {address} ({detail or 'unavailable'})"
    return CallError(detail or code.name, code.name)


class RegistryClient:
    def __init__(self, address: str, *, timeout: float = 5.0) -> None:
        self.address, self.timeout = address, timeout
        self._channel = grpc.insecure_channel(address)
        self.ns = pb_grpc.NetworkServiceRegistryStub(self._channel)
        self.nse = pb_grpc.NetworkServiceEndpointRegistryStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Any, request: Any) -> Any:
        try:
            return fn(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error(self.address, e) from None

    def _all(self, fn: Any, request: Any) -> list[Any]:
        try:
            return list(fn(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise _error(self.address, e) from None

    # -- endpoints --------------------------------------------------------------------------------
    def find_endpoints(
        self,
        *,
        service: str = "",
        name: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[pb.NetworkServiceEndpoint]:
        """Live endpoints offering `service` (with `labels` for it) and/or named `name`."""
        nse = pb.NetworkServiceEndpoint(name=name)
        if service:
            nse.network_service_names.append(service)
            if labels:
                nse.network_service_labels[service].labels.update(labels)
        query = pb.NetworkServiceEndpointQuery(network_service_endpoint=nse)
        return [r.network_service_endpoint for r in self._all(self.nse.Find, query)]

    def watch_endpoints(
        self, query: pb.NetworkServiceEndpoint, *, timeout: float | None = None
    ) -> Iterator[pb.NetworkServiceEndpointResponse]:
        """The current matches, then every change (deleted=True: gone), until `timeout` or
        `.cancel()` on the result. gRPC errors come through as grpc.RpcError."""
        req = pb.NetworkServiceEndpointQuery(network_service_endpoint=query, watch=True)
        return self.nse.Find(req, timeout=timeout)  # type: ignore[no-any-return]

    def register_endpoint(self, nse: pb.NetworkServiceEndpoint) -> pb.NetworkServiceEndpoint:
        return self._call(self.nse.Register, nse)  # type: ignore[no-any-return]

    def unregister_endpoint(self, name: str) -> None:
        self._call(self.nse.Unregister, pb.NetworkServiceEndpoint(name=name))

    # -- services ---------------------------------------------------------------------------------
    def find_services(self, name: str = "") -> list[pb.NetworkService]:
        query = pb.NetworkServiceQuery(network_service=pb.NetworkService(name=name))
        return [r.network_service for r in self._all(self.ns.Find, query)]

    def register_service(self, ns: pb.NetworkService) -> pb.NetworkService:
        return self._call(self.ns.Register, ns)  # type: ignore[no-any-return]

    def unregister_service(self, name: str) -> None:
        self._call(self.ns.Unregister, pb.NetworkService(name=name))
