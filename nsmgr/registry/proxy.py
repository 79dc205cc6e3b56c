"""The proxy Network Service Registry (pNSR): Find for `name@other-domain`, answered by that
domain's registry.

1. The domain's registry is found by DNS (resolver.py: SRV `_nsregistry._tcp.<domain>`, RFC 2782
   order, then A/AAAA).
2. The query goes there over gRPC (plain TCP) with the `@domain` suffixes taken off, so the remote
   registry sees its own local names. Targets are tried in order while they are UNAVAILABLE before
   answering anything; after the first answer, an error ends the stream.
3. Every endpoint that comes back is rewritten so the caller knows it is remote and reaches it
   through the proxy NSMgr: `name`, `network_service_names` and the keys of
   `network_service_labels` get `@<domain>`; `url` becomes the configured pNSMgr URL (an empty
   `pnsmgr_url` keeps the remote URL, for domains routable to each other). Services get
   `@<domain>` on their name. With watch=true the remote stream is relayed, rewritten, as it comes.

The pNSMgr needs the real URL behind `nse@domain`: `find_endpoints(..., rewrite=False)` gives the
remote registry's answer as it is (names without the suffix, the remote URL).

Register and Unregister are never forwarded (server.py refuses remote names): a domain's registry
holds what its own endpoints register, and a refresh loop across domains would make another
domain's registry depend on this one's clients.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from nsmgr.registry.errors import RemoteError
from nsmgr.registry.resolver import Resolver, Target
from sriov_nsm_wire.registry import registry_pb2 as pb
from sriov_nsm_wire.registry import registry_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")

# A registry that was down should be tried again soon after it is back, not after gRPC's default
# reconnect backoff (up to 120 s).
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def strip_domain(name: str, domain: str) -> str:
    suffix = "@" + domain
    return name[: -len(suffix)] if name.endswith(suffix) else name


def remote_endpoint_query(q: pb.NetworkServiceEndpointQuery, domain: str) -> Any:
    out = pb.NetworkServiceEndpointQuery()
    out.CopyFrom(q)
    nse = out.network_service_endpoint
    nse.name = strip_domain(nse.name, domain)
    names = [strip_domain(n, domain) for n in nse.network_service_names]
    del nse.network_service_names[:]
    nse.network_service_names.extend(names)
    labels = {
        strip_domain(k, domain): dict(v.labels) for k, v in nse.network_service_labels.items()
    }
    nse.network_service_labels.clear()
    for k, v in labels.items():
        nse.network_service_labels[k].labels.update(v)
    return out


def remote_service_query(q: pb.NetworkServiceQuery, domain: str) -> Any:
    out = pb.NetworkServiceQuery()
    out.CopyFrom(q)
    out.network_service.name = strip_domain(out.network_service.name, domain)
    return out


def rewrite_endpoint(nse: pb.NetworkServiceEndpoint, domain: str, url: str) -> None:
    """In place: the remote endpoint as this domain's callers see it."""
    nse.name = f"{nse.name}@{domain}"
    names = [f"{n}@{domain}" for n in nse.network_service_names]
    del nse.network_service_names[:]
    nse.network_service_names.extend(names)
    labels = {f"{k}@{domain}": dict(v.labels) for k, v in nse.network_service_labels.items()}
    nse.network_service_labels.clear()
    for k, v in labels.items():
        nse.network_service_labels[k].labels.update(v)
    if url:
        nse.url = url


class Proxy:
    """Forwards Find to other domains' registries; one per registry process (channels cached)."""

    def __init__(self, resolver: Resolver, *, pnsmgr_url: str = "", timeout: float = 5.0) -> None:
        self.resolver = resolver
        self.pnsmgr_url = pnsmgr_url
        self.timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()

    def _channel(self, target: Target) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(target.address)
            if ch is None:
                ch = grpc.insecure_channel(target.address, options=CHANNEL_OPTIONS)
                self._channels[target.address] = ch
            return ch

    def _stream(
        self,
        domain: str,
        call: Callable[[grpc.Channel], Iterator[R]],
        on_call: Callable[[Any], None],
    ) -> Iterator[R]:
        """The first target that answers, streamed; RemoteError when none does."""
        targets = self.resolver.registry_targets(domain)
        last: grpc.RpcError | None = None
        for i, target in enumerate(targets):
            stream = call(self._channel(target))
            on_call(stream)
            try:
                first = next(stream)
            except StopIteration:
                return
            except grpc.RpcError as e:
                last = e
                if e.code() == grpc.StatusCode.UNAVAILABLE and i + 1 < len(targets):
                    log.info(
                        "registry of %s at %s unavailable; trying the next", domain, target.address
                    )
                    continue
                raise _remote_error(domain, target, e) from None
            yield first
            try:
                yield from stream
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED:
                    return  # our caller went away and we cancelled the relay
                raise _remote_error(domain, target, e) from None
            return
        raise RemoteError(f"registry of domain {domain!r}: no target answered ({last})")

    def find_endpoints(
        self,
        domain: str,
        query: pb.NetworkServiceEndpointQuery,
        *,
        timeout: float | None = None,
        rewrite: bool = True,
        on_call: Callable[[Any], None] = lambda _c: None,
    ) -> Iterator[pb.NetworkServiceEndpointResponse]:
        """The remote registry's answer to `query` (names may carry `@domain`), rewritten."""
        remote = remote_endpoint_query(query, domain)
        limit = None if query.watch else (timeout or self.timeout)

        def call(ch: grpc.Channel) -> Iterator[pb.NetworkServiceEndpointResponse]:
            return pb_grpc.NetworkServiceEndpointRegistryStub(ch).Find(remote, timeout=limit)

        for resp in self._stream(domain, call, on_call):
            if rewrite:
                rewrite_endpoint(resp.network_service_endpoint, domain, self.pnsmgr_url)
            yield resp

    def find_services(
        self,
        domain: str,
        query: pb.NetworkServiceQuery,
        *,
        timeout: float | None = None,
        on_call: Callable[[Any], None] = lambda _c: None,
    ) -> Iterator[pb.NetworkServiceResponse]:
        remote = remote_service_query(query, domain)
        limit = None if query.watch else (timeout or self.timeout)

        def call(ch: grpc.Channel) -> Iterator[pb.NetworkServiceResponse]:
            return pb_grpc.NetworkServiceRegistryStub(ch).Find(remote, timeout=limit)

        for resp in self._stream(domain, call, on_call):
            resp.network_service.name = f"{resp.network_service.name}@{domain}"
            yield resp


def _remote_error(domain: str, target: Target, e: grpc.RpcError) -> RemoteError:
    code = e.code()
    detail = " ".join(str(e.details() or code.name).split())
    return RemoteError(
        f"registry of domain {domain!r} at {target.address}: {code.name}: {detail}", code.name
    )
