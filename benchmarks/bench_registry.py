"""The Network Service Registry: Find latency, local and across domains (issue 6).

Set-up, all in this process over gRPC on TCP loopback (as nsmgr reaches the registry Service):
two registries, `local.test` and `remote.test`, each with a SQLite file store holding 1,000 live
endpoints over 100 services (10 per service, labels on each). The local registry's pNSR resolves
`remote.test` through dnsmasq on loopback (SRV + A; a stand-in answering from a table where
dnsmasq is missing, reported under "dns"), and its DNS cache is warm before timing starts.

Figures, calls interleaved so noise hits all alike (`benchmarks.sample_interleaved`):

- Find, local: `Find(network_service_names=[svc-N])` without watch, read to the end (10 endpoints).
- Floor: the same call to a server whose Find yields 10 ready-made responses (no store, no
  matching): what a Find cannot go below on this machine. Goal: local ≤ 2× floor.
- Find, remote with a warm DNS cache: `svc-N@remote.test` through the local registry: the query
  rewritten, relayed to the remote registry over a cached channel, 10 answers rewritten back.
  Goal: ≤ 3× the local Find (one more gRPC hop and the same store work on the far side). The
  DNS questions asked while timing are counted (`dns_questions`: should be 0).
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from benchmarks import Metric, median, p90, p99, sample_interleaved
from nsmgr.registry.model import Endpoint
from nsmgr.registry.resolver import Resolver
from nsmgr.registry.store import SqliteBackend
from sriov_nsm_wire.registry import registry_pb2 as pb
from sriov_nsm_wire.registry import registry_pb2_grpc as pb_grpc
from tests.nsmgr.registry import helpers

SERVICES, PER_SERVICE = 100, 10
LOCAL_RATIO_GOAL, REMOTE_RATIO_GOAL = 2.0, 3.0


def fill(backend: SqliteBackend, now: float) -> None:
    for s in range(SERVICES):
        for i in range(PER_SERVICE):
            name = f"nse-{s}-{i}"
            backend.put_endpoint(
                Endpoint(
                    name,
                    (f"svc-{s}",),
                    {f"svc-{s}": {"zone": str(i % 3), "node": f"node-{i}"}},
                    f"tcp://10.{s}.{i}.1:5001",
                    now + 3600,
                    now,
                ),
                now,
            )


class FloorFind(pb_grpc.NetworkServiceEndpointRegistryServicer):
    """Find answering 10 ready-made endpoints: gRPC and protobuf only."""

    def __init__(self) -> None:
        self.answers = [
            pb.NetworkServiceEndpointResponse(
                network_service_endpoint=pb.NetworkServiceEndpoint(
                    name=f"nse-0-{i}", network_service_names=["svc-0"], url="tcp://10.0.0.1:5001"
                )
            )
            for i in range(PER_SERVICE)
        ]

    def Find(self, request: Any, context: Any) -> Iterator[Any]:
        yield from self.answers


@contextlib.contextmanager
def floor_server() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(FloorFind(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait(2)


@contextlib.contextmanager
def remote_dns(workdir: str, port: int) -> Iterator[tuple[Resolver, Callable[[], int], str]]:
    """A resolver for remote.test: dnsmasq if there is one, else a table; and a question count."""
    # the cache stays warm through the run, the negative answers (no AAAA) too
    big = {"min_ttl": 3600.0, "max_ttl": 3600.0, "negative_ttl": 3600.0}
    if not os.access(helpers.DNSMASQ, os.X_OK):
        from tests.nsmgr.registry.test_resolver import FakeDns, a, srv

        table = FakeDns(
            {
                ("_nsregistry._tcp.remote.test.", "SRV"): [srv(10, 0, port, "reg.remote.test")],
                ("reg.remote.test.", "A"): [a("127.0.0.1")],
                ("reg.remote.test.", "AAAA"): [],
            }
        )
        yield Resolver(query=table, **big), lambda: len(table.asked), "stand-in"
        return
    records = [
        f"srv-host=_nsregistry._tcp.remote.test,reg.remote.test,{port},10,100",
        "host-record=reg.remote.test,127.0.0.1",
    ]
    with helpers.dnsmasq(records, workdir) as dns:
        yield Resolver(nameservers=[dns.nameserver], **big), lambda: len(dns.queries()), "dnsmasq"


def run(quick: bool = False) -> list[Metric]:
    calls, warmup = (20, 5) if quick else (2000, 200)
    now = time.time()
    rng = random.Random(6)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="nsr-bench-"))
        sock_dir = stack.enter_context(helpers.short_tmpdir())
        backends = {}
        for domain in ("local.test", "remote.test"):
            backends[domain] = SqliteBackend(f"{tmp}/{domain}.db")
            fill(backends[domain], now)
        remote = stack.enter_context(
            helpers.served(
                sock_dir, domain="remote.test", backend=backends["remote.test"], name="r", tcp=True
            )
        )
        resolver, questions, dns_kind = stack.enter_context(remote_dns(tmp, remote.tcp_port))
        local = stack.enter_context(
            helpers.served(
                sock_dir,
                domain="local.test",
                backend=backends["local.test"],
                resolver=resolver,
                pnsmgr_url="tcp://10.255.0.1:5004",
                name="l",
                tcp=True,
            )
        )
        floor_port = stack.enter_context(floor_server())

        def stub(port: int) -> pb_grpc.NetworkServiceEndpointRegistryStub:
            ch = grpc.insecure_channel(f"127.0.0.1:{port}")
            stack.callback(ch.close)
            grpc.channel_ready_future(ch).result(timeout=10)
            return pb_grpc.NetworkServiceEndpointRegistryStub(ch)

        local_stub, floor_stub = stub(local.tcp_port), stub(floor_port)

        def find(s: pb_grpc.NetworkServiceEndpointRegistryStub, service: str) -> Callable[[], Any]:
            def call() -> None:
                name = service.replace("N", str(rng.randrange(SERVICES)))
                q = pb.NetworkServiceEndpointQuery(
                    network_service_endpoint=pb.NetworkServiceEndpoint(network_service_names=[name])
                )
                got = list(s.Find(q, timeout=10))
                if len(got) != PER_SERVICE:
                    raise RuntimeError(f"Find {name}: {len(got)} endpoints")

            return call

        fns = {
            "local": find(local_stub, "svc-N"),
            "floor": find(floor_stub, "svc-N"),
            "remote": find(local_stub, "svc-N@remote.test"),
        }
        fns["remote"]()  # the DNS cache warm before timing
        asked_before = questions()
        samples = sample_interleaved(fns, calls, warmup)
        asked = questions() - asked_before

    loc, flo, rem = (median(samples[k]) for k in ("local", "floor", "remote"))
    common = {"endpoints": SERVICES * PER_SERVICE, "answers_per_find": PER_SERVICE}

    def ms(name: str, label: str, key: str, **extra: Any) -> Metric:
        s = samples[key]
        return Metric(name, label, "ms", median(s), p90(s), runs=len(s), p99=p99(s), extra=extra)

    return [
        ms("registry.find_local", "Find 10 of 1,000 endpoints, local", "local", **common),
        ms("registry.find_floor", "Find floor: 10 ready-made answers", "floor"),
        Metric(
            "registry.find_local_ratio",
            "Find local / floor",
            "x",
            loc / flo,
            None,
            goal=f"≤ {LOCAL_RATIO_GOAL:g}×",
            met=loc / flo <= LOCAL_RATIO_GOAL,
            runs=calls,
        ),
        ms(
            "registry.find_remote",
            "Find 10 endpoints in another domain (warm DNS)",
            "remote",
            dns=dns_kind,
            dns_questions=asked,
            **common,
        ),
        Metric(
            "registry.find_remote_ratio",
            "Find remote / local",
            "x",
            rem / loc,
            None,
            goal=f"≤ {REMOTE_RATIO_GOAL:g}×, no DNS question",
            met=rem / loc <= REMOTE_RATIO_GOAL and asked == 0,
            runs=calls,
        ),
    ]
