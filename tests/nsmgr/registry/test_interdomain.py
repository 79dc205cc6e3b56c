"""Two domains on loopback, for real: dnsmasq answers `_nsregistry._tcp.<domain>` SRV and A
records, and each domain has its own `nsm-registry serve` process. The local registry's Find for
`svc@remote.test` is forwarded to the remote one and comes back rewritten to the pNSMgr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nsmgr.registry.client import CallError, RegistryClient
from sriov_nsm_wire.registry import registry_pb2 as pb
from tests.nsmgr.registry.helpers import (
    Dnsmasq,
    cli,
    dnsmasq,
    free_port,
    needs_dnsmasq,
    registry_process,
    short_tmpdir,
    write_config,
)

pytestmark = needs_dnsmasq
PNSMGR = "tcp://127.0.0.1:5004"


@dataclass
class Domains:
    dns: Dnsmasq
    local: str  # gRPC address of local.test's registry
    remote: str  # ... of remote.test's


@pytest.fixture(scope="module")
def domains() -> Iterator[Domains]:
    with short_tmpdir() as d:
        local_port, remote_port, dead_port = free_port(), free_port(), free_port()
        records = [
            f"srv-host=_nsregistry._tcp.remote.test,reg.remote.test,{remote_port},10,100",
            f"srv-host=_nsregistry._tcp.local.test,reg.local.test,{local_port},10,100",
            f"srv-host=_nsregistry._tcp.down.test,reg.down.test,{dead_port},10,100",
            "host-record=reg.remote.test,127.0.0.1",
            "host-record=reg.local.test,127.0.0.1",
            "host-record=reg.down.test,127.0.0.1",
        ]
        with dnsmasq(records, d) as dns:
            dns_block = f"{{nameservers: ['{dns.nameserver}'], timeout: 0.5, attempts: 2}}"
            local_cfg = write_config(
                f"{d}/local.yaml",
                "local.test",
                d,
                dns=dns_block,
                proxy=f"{{pnsmgr_url: '{PNSMGR}', timeout: 2}}",
                server="{metrics: ''}",
            )
            remote_cfg = write_config(
                f"{d}/remote.yaml", "remote.test", d, dns=dns_block, server="{metrics: ''}"
            )
            local, remote = f"127.0.0.1:{local_port}", f"127.0.0.1:{remote_port}"
            with registry_process(remote_cfg, remote), registry_process(local_cfg, local):
                with RegistryClient(remote) as r:
                    r.register_service(pb.NetworkService(name="svc", payload="ETHERNET"))
                    for name in ("nse-r1", "nse-r2"):
                        r.register_endpoint(
                            pb.NetworkServiceEndpoint(
                                name=name,
                                network_service_names=["svc"],
                                url=f"tcp://192.0.2.{name[-1]}:5001",
                                network_service_labels={
                                    "svc": pb.NetworkServiceLabels(labels={"zone": name[-1]})
                                },
                            )
                        )
                with RegistryClient(local) as r:
                    r.register_endpoint(
                        pb.NetworkServiceEndpoint(
                            name="nse-l1", network_service_names=["svc"], url="tcp://10.0.0.1:1"
                        )
                    )
                yield Domains(dns, local, remote)


def test_local_domain_find_stays_local(domains: Domains) -> None:
    with RegistryClient(domains.local) as r:
        for query in ("svc", "svc@local.test"):
            assert [(e.name, e.url) for e in r.find_endpoints(service=query)] == [
                ("nse-l1", "tcp://10.0.0.1:1")
            ]


def test_remote_domain_find_returns_the_remote_endpoints_rewritten(domains: Domains) -> None:
    with RegistryClient(domains.local) as r:
        got = r.find_endpoints(service="svc@remote.test")
        assert [(e.name, list(e.network_service_names), e.url) for e in got] == [
            ("nse-r1@remote.test", ["svc@remote.test"], PNSMGR),
            ("nse-r2@remote.test", ["svc@remote.test"], PNSMGR),
        ]
        assert dict(got[1].network_service_labels["svc@remote.test"].labels) == {"zone": "2"}
        assert got[0].HasField("expiration_time")
        # by name, and with labels, the query goes over rewritten back
        assert [e.name for e in r.find_endpoints(name="nse-r2@remote.test")] == [
            "nse-r2@remote.test"
        ]
        picked = r.find_endpoints(service="svc@remote.test", labels={"zone": "1"})
        assert [e.name for e in picked] == ["nse-r1@remote.test"]
        assert [s.name for s in r.find_services("svc@remote.test")] == ["svc@remote.test"]
    with RegistryClient(domains.remote) as r:  # the remote registry's own view: its local names
        assert r.find_endpoints(service="svc")[0].url == "tcp://192.0.2.1:5001"


def test_a_warm_dns_cache_asks_no_question(domains: Domains) -> None:
    with RegistryClient(domains.local) as r:
        r.find_endpoints(service="svc@remote.test")
        before = len(domains.dns.queries())
        for _ in range(5):
            r.find_endpoints(service="svc@remote.test")
        assert len(domains.dns.queries()) == before


def test_cli_lists_and_shows_a_remote_domain(domains: Domains) -> None:
    res = cli(
        "list", "--registry", domains.local, "--network-service", "svc@remote.test", "-o", "json"
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [e["name"] for e in doc["endpoints"]] == ["nse-r1@remote.test", "nse-r2@remote.test"]
    assert "services" not in doc
    res = cli("show", "nse-r1@remote.test", "--registry", domains.local)
    assert res.returncode == 0, res.stderr
    assert "nse-r1@remote.test" in res.stdout and PNSMGR in res.stdout


@pytest.mark.parametrize(
    ("service", "code", "message"),
    [
        (
            "svc@nowhere.test",
            "NOT_FOUND",
            "domain 'nowhere.test' has no registry: no DNS SRV "
            "record _nsregistry._tcp.nowhere.test",
        ),
        ("svc@down.test", "UNAVAILABLE", "registry of domain 'down.test' at 127.0.0.1:"),
    ],
)
def test_unresolvable_or_unreachable_domains(
    domains: Domains, service: str, code: str, message: str
) -> None:
    with RegistryClient(domains.local) as r, pytest.raises(CallError) as e:
        r.find_endpoints(service=service)
    assert e.value.code == code and message in str(e.value) and "\n" not in str(e.value)
    res = cli("list", "--registry", domains.local, "--network-service", service)
    assert res.returncode == (2 if code == "NOT_FOUND" else 1)
    assert res.stdout == "" and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("nsm-registry: error: ")


def test_remote_names_cannot_be_registered_here(domains: Domains) -> None:
    bad = pb.NetworkServiceEndpoint(
        name="nse-x@remote.test", network_service_names=["svc"], url="tcp://1.2.3.4:5"
    )
    with (
        RegistryClient(domains.local) as r,
        pytest.raises(CallError, match=r"register it with remote\.test's registry") as e,
    ):
        r.register_endpoint(bad)
    assert e.value.code == "INVALID_ARGUMENT"
