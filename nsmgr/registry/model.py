"""The registry's records and queries as plain data, their wire form, and NSM's matching rules.

Records are what a backend stores; the gRPC layer converts at its edge (`*_from_pb`, `*_to_pb`) so
the stores never see protobuf. Times are seconds since the epoch (float).

Matching follows networkservicemesh/sdk's matchutils, with exact strings where NSM matches
substrings (a name is an identity, not a pattern): every field left empty in a query matches
anything; `name` and `url` compare exactly; `network_service_names` must all be offered by the
endpoint; `network_service_labels` must all be among the endpoint's labels for that service; a
service query compares `name` and `payload`. A query's `expiration_time` is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from sriov_nsm_wire.registry import registry_pb2 as pb

Labels = Mapping[str, Mapping[str, str]]  # network service name -> its labels


@dataclass(frozen=True)
class Service:
    """A NetworkService. `matches` are registry.Match in proto3 JSON form (camelCase keys)."""

    name: str
    payload: str = ""
    matches: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """A NetworkServiceEndpoint. `registered` is its first registration, kept across refreshes."""

    name: str
    network_service_names: tuple[str, ...] = ()
    network_service_labels: Labels = field(default_factory=dict)
    url: str = ""
    expires: float = 0.0
    registered: float = 0.0

    def live(self, now: float) -> bool:
        return self.expires > now


Record = Service | Endpoint


@dataclass(frozen=True)
class Change:
    """What a watcher is told: a record registered or refreshed, or (deleted) gone."""

    record: Record
    deleted: bool = False


@dataclass(frozen=True)
class ServiceQuery:
    name: str = ""
    payload: str = ""

    def matches(self, s: Service) -> bool:
        return (not self.name or s.name == self.name) and (
            not self.payload or s.payload == self.payload
        )


@dataclass(frozen=True)
class EndpointQuery:
    name: str = ""
    network_service_names: tuple[str, ...] = ()
    network_service_labels: Labels = field(default_factory=dict)
    url: str = ""

    def matches(self, e: Endpoint) -> bool:
        if self.name and e.name != self.name:
            return False
        if self.url and e.url != self.url:
            return False
        if any(n not in e.network_service_names for n in self.network_service_names):
            return False
        for service, wanted in self.network_service_labels.items():
            have = e.network_service_labels.get(service, {})
            if any(have.get(k) != v for k, v in wanted.items()):
                return False
        return True


# -- wire form ------------------------------------------------------------------------------------


def to_timestamp(t: float) -> Timestamp:
    """Microseconds: what a float of today's epoch seconds holds exactly enough."""
    ts = Timestamp()
    ts.FromMicroseconds(round(t * 1e6))
    return ts


def from_timestamp(ts: Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


def _labels_from_pb(m: Mapping[str, pb.NetworkServiceLabels]) -> dict[str, dict[str, str]]:
    return {svc: dict(v.labels) for svc, v in m.items()}


def service_from_pb(m: pb.NetworkService) -> Service:
    matches = tuple(json_format.MessageToDict(x) for x in m.matches)
    return Service(name=m.name, payload=m.payload, matches=matches)


def service_to_pb(s: Service) -> pb.NetworkService:
    out = pb.NetworkService(name=s.name, payload=s.payload)
    for x in s.matches:
        json_format.ParseDict(x, out.matches.add())
    return out


def endpoint_from_pb(m: pb.NetworkServiceEndpoint) -> Endpoint:
    """Times unset on the wire are 0.0 here."""
    return Endpoint(
        name=m.name,
        network_service_names=tuple(m.network_service_names),
        network_service_labels=_labels_from_pb(m.network_service_labels),
        url=m.url,
        expires=from_timestamp(m.expiration_time) if m.HasField("expiration_time") else 0.0,
        registered=(
            from_timestamp(m.initial_registration_time)
            if m.HasField("initial_registration_time")
            else 0.0
        ),
    )


def endpoint_to_pb(e: Endpoint) -> pb.NetworkServiceEndpoint:
    out = pb.NetworkServiceEndpoint(
        name=e.name, network_service_names=list(e.network_service_names), url=e.url
    )
    for svc, labels in e.network_service_labels.items():
        out.network_service_labels[svc].labels.update(labels)
    if e.expires:
        out.expiration_time.CopyFrom(to_timestamp(e.expires))
    if e.registered:
        out.initial_registration_time.CopyFrom(to_timestamp(e.registered))
    return out


def service_query_from_pb(m: pb.NetworkService) -> ServiceQuery:
    return ServiceQuery(name=m.name, payload=m.payload)


def endpoint_query_from_pb(m: pb.NetworkServiceEndpoint) -> EndpointQuery:
    return EndpointQuery(
        name=m.name,
        network_service_names=tuple(m.network_service_names),
        network_service_labels=_labels_from_pb(m.network_service_labels),
        url=m.url,
    )


# -- plain-data form (the CLI's -o json, the stores' JSON columns) -------------------------------


def to_json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def pb_to_dict(m: Any) -> dict[str, Any]:
    """A registry message as data with the proto's field names (`network_service_names`)."""
    return json_format.MessageToDict(m, preserving_proto_field_name=True)
