"""NSM's matching rules on plain data, and the wire form round trip."""

from __future__ import annotations

import pytest

from nsmgr.registry.model import (
    Endpoint,
    EndpointQuery,
    Service,
    ServiceQuery,
    endpoint_from_pb,
    endpoint_query_from_pb,
    endpoint_to_pb,
    service_from_pb,
    service_to_pb,
)
from sriov_nsm_wire.registry import registry_pb2 as pb

NSE = Endpoint(
    name="torshim-a",
    network_service_names=("myns", "other"),
    network_service_labels={"myns": {"app": "fw", "zone": "a"}},
    url="tcp://10.0.0.5:5001",
    expires=2000.0,
    registered=1000.0,
)

# (query, matches NSE?)
ENDPOINT_CASES = [
    (EndpointQuery(), True),  # every empty field matches anything
    (EndpointQuery(name="torshim-a"), True),
    (EndpointQuery(name="torshim"), False),  # exact, not NSM's substring match
    (EndpointQuery(name="torshim-a2"), False),
    (EndpointQuery(network_service_names=("myns",)), True),
    (EndpointQuery(network_service_names=("other", "myns")), True),  # all of them, any order
    (EndpointQuery(network_service_names=("myns", "third")), False),
    (EndpointQuery(network_service_names=("my",)), False),
    (EndpointQuery(network_service_labels={"myns": {"app": "fw"}}), True),  # a subset
    (EndpointQuery(network_service_labels={"myns": {"app": "fw", "zone": "a"}}), True),
    (EndpointQuery(network_service_labels={"myns": {"app": "lb"}}), False),
    (EndpointQuery(network_service_labels={"myns": {"tier": "x"}}), False),
    (EndpointQuery(network_service_labels={"other": {"app": "fw"}}), False),
    (EndpointQuery(network_service_labels={"myns": {}}), True),
    (EndpointQuery(url="tcp://10.0.0.5:5001"), True),
    (EndpointQuery(url="tcp://10.0.0.5:5002"), False),
    (EndpointQuery(name="torshim-a", network_service_names=("other",), url=NSE.url), True),
    (EndpointQuery(name="torshim-a", network_service_names=("nope",)), False),
]


@pytest.mark.parametrize(("query", "want"), ENDPOINT_CASES)
def test_endpoint_matching(query: EndpointQuery, want: bool) -> None:
    assert query.matches(NSE) is want


@pytest.mark.parametrize(
    ("query", "want"),
    [
        (ServiceQuery(), True),
        (ServiceQuery(name="myns"), True),
        (ServiceQuery(name="my"), False),
        (ServiceQuery(payload="ETHERNET"), True),
        (ServiceQuery(payload="IP"), False),
        (ServiceQuery(name="myns", payload="IP"), False),
    ],
)
def test_service_matching(query: ServiceQuery, want: bool) -> None:
    assert query.matches(Service("myns", "ETHERNET")) is want


def test_endpoint_wire_round_trip() -> None:
    m = endpoint_to_pb(NSE)
    assert m.expiration_time.seconds == 2000 and m.initial_registration_time.seconds == 1000
    assert dict(m.network_service_labels["myns"].labels) == {"app": "fw", "zone": "a"}
    assert endpoint_from_pb(m) == NSE
    # a query built from the wire matches like the same query built here
    q = endpoint_query_from_pb(m)
    assert q.name == NSE.name and q.network_service_names == NSE.network_service_names


def test_unset_times_are_zero() -> None:
    e = endpoint_from_pb(pb.NetworkServiceEndpoint(name="x", url="tcp://a:1"))
    assert e.expires == 0.0 and e.registered == 0.0
    assert not endpoint_to_pb(e).HasField("expiration_time")


def test_service_matches_round_trip() -> None:
    m = pb.NetworkService(name="myns", payload="ETHERNET")
    match = m.matches.add(fallthrough=True)
    match.source_selector["app"] = "client"
    match.routes.add(weight=3).destination_selector["app"] = "fw"
    match.metadata.labels["x"] = "y"
    s = service_from_pb(m)
    assert s.matches == (
        {
            "sourceSelector": {"app": "client"},
            "routes": [{"destinationSelector": {"app": "fw"}, "weight": 3}],
            "fallthrough": True,
            "metadata": {"labels": {"x": "y"}},
        },
    )
    assert service_to_pb(s) == m
