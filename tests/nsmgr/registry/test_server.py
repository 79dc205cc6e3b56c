"""The two gRPC registries in-process over a unix socket: Register/Find/Unregister, watch streams,
expiry, TTL limits, refusals; and the pNSR relaying to another in-process registry over TCP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from nsmgr.registry.client import CallError, RegistryClient
from nsmgr.registry.kube import CrdBackend
from nsmgr.registry.resolver import Resolver
from sriov_nsm_wire.registry import registry_pb2 as pb
from sriov_nsm_wire.registry import registry_pb2_grpc as pb_grpc
from tests.nsmgr.registry.fake_kube import FakeCrds
from tests.nsmgr.registry.helpers import Served, served, short_tmpdir
from tests.nsmgr.registry.test_resolver import FakeDns, a, srv

SVC = "myns.example.com"


def nse(name: str, *services: str, url: str = "tcp://10.0.0.5:5001", **kw: Any) -> Any:
    return pb.NetworkServiceEndpoint(
        name=name, network_service_names=list(services) or [SVC], url=url, **kw
    )


def ts(t: float) -> Timestamp:
    out = Timestamp()
    out.FromMicroseconds(round(t * 1e6))
    return out


@pytest.fixture(params=["sqlite", "crd"])
def reg(request: pytest.FixtureRequest) -> Iterator[Served]:
    backend = CrdBackend(FakeCrds()) if request.param == "crd" else None
    with short_tmpdir() as d, served(d, backend=backend, default_ttl=30, max_ttl=120) as s:
        yield s


@pytest.fixture
def client(reg: Served) -> Iterator[RegistryClient]:
    with RegistryClient(reg.address, timeout=5) as c:
        yield c


def stub(reg: Served) -> tuple[grpc.Channel, pb_grpc.NetworkServiceEndpointRegistryStub]:
    ch = grpc.insecure_channel(reg.address)
    return ch, pb_grpc.NetworkServiceEndpointRegistryStub(ch)


# -- register, find, unregister -------------------------------------------------------------------


def test_register_find_unregister(client: RegistryClient) -> None:
    client.register_service(pb.NetworkService(name=SVC, payload="ETHERNET"))
    before = time.time()
    got = client.register_endpoint(nse("torshim"))
    assert got.name == "torshim"
    expires = got.expiration_time.ToMicroseconds() / 1e6
    assert before + 30 - 1 < expires < time.time() + 30 + 1  # default_ttl
    assert got.HasField("initial_registration_time")
    client.register_endpoint(nse("other", "other-svc"))

    assert [s.name for s in client.find_services()] == [SVC]
    assert [e.name for e in client.find_endpoints(service=SVC)] == ["torshim"]
    assert [e.name for e in client.find_endpoints()] == ["other", "torshim"]
    # our own domain is the local one, in queries as in registrations
    assert [e.name for e in client.find_endpoints(service=f"{SVC}@local.test")] == ["torshim"]
    client.register_endpoint(nse("third@local.test", f"{SVC}@local.test"))
    assert [e.name for e in client.find_endpoints(service=SVC)] == ["third", "torshim"]

    client.unregister_endpoint("torshim")
    client.unregister_endpoint("torshim")  # again: no error (it may have expired meanwhile)
    client.unregister_service(SVC)
    assert [e.name for e in client.find_endpoints(service=SVC)] == ["third"]
    assert client.find_services() == []


def test_labels_select_endpoints(client: RegistryClient) -> None:
    for name, zone in (("nse-a", "a"), ("nse-b", "b")):
        m = nse(name)
        m.network_service_labels[SVC].labels["zone"] = zone
        client.register_endpoint(m)
    assert [e.name for e in client.find_endpoints(service=SVC, labels={"zone": "b"})] == ["nse-b"]


def test_expiration_time_is_the_callers_within_max_ttl(client: RegistryClient) -> None:
    now = time.time()
    asked = client.register_endpoint(nse("a", expiration_time=ts(now + 50)))
    assert asked.expiration_time.ToMicroseconds() / 1e6 == pytest.approx(now + 50, abs=0.01)
    capped = client.register_endpoint(nse("b", expiration_time=ts(now + 10_000)))
    assert capped.expiration_time.ToMicroseconds() / 1e6 == pytest.approx(now + 120, abs=1)
    past = client.register_endpoint(nse("c", expiration_time=ts(now - 5)))
    assert past.expiration_time.ToMicroseconds() / 1e6 == pytest.approx(now + 30, abs=1)


def test_refresh_keeps_the_first_registration_time(client: RegistryClient) -> None:
    first = client.register_endpoint(nse("torshim"))
    time.sleep(0.01)
    again = client.register_endpoint(nse("torshim"))
    assert again.initial_registration_time == first.initial_registration_time
    assert again.expiration_time.ToMicroseconds() > first.expiration_time.ToMicroseconds()


def test_an_endpoint_without_a_name_gets_one(client: RegistryClient) -> None:
    got = client.register_endpoint(nse(""))
    assert got.name.startswith("nse-") and len(got.name) == 16
    assert [e.name for e in client.find_endpoints(name=got.name)] == [got.name]


# -- refusals -------------------------------------------------------------------------------------

MALFORMED = ["svc@", "@dom", "x" * 64, "Upper", "a..b", "svc@" + "d" * 64 + ".test"]


@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_names_are_invalid_argument_in_one_line(client: RegistryClient, bad: str) -> None:
    calls = [
        lambda: client.register_endpoint(nse(bad)),
        lambda: client.register_endpoint(nse("ok", bad)),
        lambda: client.register_service(pb.NetworkService(name=bad)),
        lambda: client.find_endpoints(service=bad),
        lambda: client.find_endpoints(name=bad),
        lambda: client.find_services(bad),
        lambda: client.unregister_endpoint(bad),
    ]
    for call in calls:
        with pytest.raises(CallError) as e:
            call()
        assert e.value.code == "INVALID_ARGUMENT"
        assert str(e.value).startswith("invalid ") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        (nse("nse@remote.test"), "is in domain 'remote.test': this registry registers names of"),
        (nse("ok", "svc@remote.test"), "is in domain 'remote.test'"),
        (nse("ok", url=""), "has no url"),
        (nse("ok", url="10.0.0.5:5001"), "give tcp://host:port or unix:///path"),
        (nse("ok", url="tcp://10.0.0.5"), "tcp:// needs host:port"),
    ],
)
def test_refused_registrations(client: RegistryClient, endpoint: Any, reason: str) -> None:
    with pytest.raises(CallError, match=reason) as e:
        client.register_endpoint(endpoint)
    assert e.value.code == "INVALID_ARGUMENT"
    assert client.find_endpoints() == []


def test_remote_find_without_a_proxy_or_across_two_domains(client: RegistryClient) -> None:
    with pytest.raises(CallError, match="interdomain Find is off") as e:
        client.find_endpoints(service="svc@remote.test")
    assert e.value.code == "INVALID_ARGUMENT"
    with pytest.raises(CallError, match=r"more than one domain: one\.test, two\.test"):
        client.find_endpoints(service="svc@one.test", name="nse@two.test")


# -- watch ----------------------------------------------------------------------------------------


def test_watch_streams_current_then_changes_then_expiry() -> None:
    # "first" must outlive the set-up on a busy machine, or the watch starts without it
    with short_tmpdir() as d, served(d, default_ttl=1.5) as reg:
        with RegistryClient(reg.address) as client:
            client.register_endpoint(nse("first"))
            client.register_endpoint(nse("unrelated", "other"))
            query = pb.NetworkServiceEndpoint(network_service_names=[SVC])
            stream = client.watch_endpoints(query, timeout=10)
            seen = [next(stream)]  # the current match first
            client.register_endpoint(nse("second", url="unix:///run/second.sock"))
            client.register_endpoint(nse("unrelated-2", "other"))  # no match: not sent
            client.unregister_endpoint("second")
            seen += [next(stream), next(stream)]
            started = time.monotonic()
            seen.append(next(stream))  # "first" expires (default_ttl 1.5 s)
            waited = time.monotonic() - started
            stream.cancel()
            got = [(r.network_service_endpoint.name, r.deleted) for r in seen]
            assert got == [("first", False), ("second", False), ("second", True), ("first", True)]
            assert waited < 3.0  # the sweeper wakes when the expiry is due, not on a slow tick
            assert client.find_endpoints(service=SVC) == []
        deadline = time.monotonic() + 5
        while reg.registry.metrics.watches._value.get() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reg.registry.metrics.watches._value.get() == 0  # the cancelled watch was let go


def test_service_watch_and_deleted_services(client: RegistryClient, reg: Served) -> None:
    ch = grpc.insecure_channel(reg.address)
    with ch:
        s = pb_grpc.NetworkServiceRegistryStub(ch)
        stream = s.Find(pb.NetworkServiceQuery(watch=True), timeout=10)
        client.register_service(pb.NetworkService(name="a", payload="IP"))
        client.unregister_service("a")
        got = [
            (r.network_service.name, r.network_service.payload, r.deleted)
            for r in (next(stream), next(stream))
        ]
        stream.cancel()
    assert got == [("a", "IP", False), ("a", "IP", True)]


def test_stopping_the_registry_ends_open_watches() -> None:
    with short_tmpdir() as d, served(d) as reg:
        ch, s = stub(reg)
        query = pb.NetworkServiceEndpointQuery(watch=True)
        stream = s.Find(query, timeout=10)
        reg.registry.stop()  # what Daemon.stop does before stopping the server
        assert list(stream) == []  # ended, with OK, well before the deadline
        ch.close()


# -- the proxy, in process ------------------------------------------------------------------------


def _dns_for(port: int, dead_port: int | None = None) -> FakeDns:
    records = [srv(10, 0, port, "reg.remote.test")]
    if dead_port is not None:  # tried first (lower priority value), and down
        records.insert(0, srv(5, 0, dead_port, "reg.remote.test"))
    return FakeDns(
        {
            ("_nsregistry._tcp.remote.test.", "SRV"): records,
            ("reg.remote.test.", "A"): [a("127.0.0.1")],
            ("reg.remote.test.", "AAAA"): [],
        }
    )


def test_proxy_relays_a_watch_with_rewritten_endpoints() -> None:
    with short_tmpdir() as d, served(d, domain="remote.test", name="remote", tcp=True) as remote:
        from tests.nsmgr.registry.helpers import free_port

        resolver = Resolver(query=_dns_for(remote.tcp_port, dead_port=free_port()))
        with (
            served(d, resolver=resolver, pnsmgr_url="tcp://10.9.9.9:5004") as local,
            RegistryClient(remote.address) as rc,
        ):
            rc.register_endpoint(nse("nse-1", "svc", url="tcp://192.0.2.1:5001"))
            ch, s = stub(local)
            with ch:
                q = pb.NetworkServiceEndpointQuery(
                    network_service_endpoint=pb.NetworkServiceEndpoint(
                        network_service_names=["svc@remote.test"]
                    ),
                    watch=True,
                )
                stream = s.Find(q, timeout=10)
                first = next(stream)
                rc.register_endpoint(nse("nse-2", "svc", url="tcp://192.0.2.2:5001"))
                second = next(stream)
                rc.unregister_endpoint("nse-1")
                third = next(stream)
                stream.cancel()
            e = first.network_service_endpoint
            assert (e.name, list(e.network_service_names), e.url) == (
                "nse-1@remote.test",
                ["svc@remote.test"],
                "tcp://10.9.9.9:5004",
            )
            assert second.network_service_endpoint.name == "nse-2@remote.test"
            assert (third.network_service_endpoint.name, third.deleted) == (
                "nse-1@remote.test",
                True,
            )
            # the remote's watch ends when ours is cancelled
            deadline = time.monotonic() + 5
            while remote.registry.metrics.watches._value.get() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert remote.registry.metrics.watches._value.get() == 0
