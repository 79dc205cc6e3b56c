"""#6 end to end, with every process real: nsmgr's agent on veth stand-ins finds the service in the
Network Service Registry and requests it from the TOR shim, which programs netconfd; another
domain is reached through DNS SRV (dnsmasq), the pNSR and the pNSMgr. Covered: local and remote
domain, policy refusal, endpoint death and replacement, expired registration, registry restart,
and healing (refresh) after a shim restart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nsmgr.agent import Agent
from nsmgr.config import parse_config
from nsmgr.errors import ForbiddenError, NotFoundError
from nsmgr.model import AttachRequest, PodRef, ServiceRef
from nsmgr.registry.client import RegistryClient
from tests.nsmgr.node import FakeNode, build_node, links
from tests.nsmgr.registry.helpers import (
    RegistryProcess,
    dnsmasq,
    free_port,
    needs_dnsmasq,
    registry_process,
    short_tmpdir,
    write_config,
)
from tests.torshim.netconf_server import NetconfServer, needs_netconfd, running_server
from tests.torshim.shim_helpers import netconf_switch
from tests.torshim.shim_helpers import write_config as shim_config
from tests.torshim.test_netconf_drivers import look, reset
from torshim.config import load_config
from torshim.daemon import Daemon
from torshim.model import PortConfig
from torshim.netconf import NetconfSession

pytestmark = [needs_netconfd, needs_dnsmasq]
P1 = "Ethernet1/1"
RED = "red.example.com"
POD = PodRef("red", "web", "uid-web")


@dataclass
class World:
    tmp: str
    switch: NetconfServer
    admin: NetconfSession
    local: str  # a.test's registry (with pNSR + pNSMgr), host:port
    remote: str  # b.test's registry: the shims register here
    remote_cfg: str
    stack: contextlib.ExitStack
    remote_proc: RegistryProcess

    def restart_remote(self) -> None:
        """SIGKILL b.test's registry and start it again on the same address and store."""
        self.remote_proc.proc.kill()
        self.remote_proc.proc.wait()
        self.remote_proc = self.stack.enter_context(registry_process(self.remote_cfg, self.remote))

    def shim(
        self,
        name: str = "torshim",
        ttl: float = 60,
        port_map: list[Any] | None = None,
        **server: Any,
    ) -> Daemon:
        d = Path(self.tmp) / name
        d.mkdir(exist_ok=True)
        srv = {"name": name, "listen": "127.0.0.1:0", "metrics": "", **server}
        path, _ = shim_config(
            d,
            netconf_switch(self.switch),
            [{"node": "node-a", "pf": "pf0", "switch": "tor1", "port": P1}]
            if port_map is None
            else port_map,
            server=srv,
        )
        text = Path(path).read_text()
        text = text.replace(f"{d}/torshim.db", f"{self.tmp}/torshim.db")  # one store: an HA pair
        text += f"registry: {{url: 'tcp://{self.remote}', ttl: {ttl}}}\n"
        Path(path).write_text(text)
        daemon = Daemon(load_config(path))
        daemon.start()
        assert daemon.ready.wait(30)
        assert daemon.registrar is not None and daemon.registrar.registered.wait(10)
        return daemon


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with short_tmpdir() as d, running_server("candidate") as switch:
        local_port, remote_port = free_port(), free_port()
        records = [
            f"srv-host=_nsregistry._tcp.b.test,reg.b.test,{remote_port},10,100",
            "host-record=reg.b.test,127.0.0.1",
        ]
        admin = NetconfSession(switch.params())
        try:
            with dnsmasq(records, d) as dns:
                dns_block = f"{{nameservers: ['{dns.nameserver}'], timeout: 0.5, attempts: 2}}"
                local = f"127.0.0.1:{local_port}"
                local_cfg = write_config(
                    f"{d}/a.yaml",
                    "a.test",
                    d,
                    dns=dns_block,
                    proxy=f"{{pnsmgr_url: 'tcp://{local}', timeout: 5}}",
                    server="{metrics: ''}",
                )
                remote_cfg = write_config(f"{d}/b.yaml", "b.test", d, server="{metrics: ''}")
                remote = f"127.0.0.1:{remote_port}"
                with contextlib.ExitStack() as stack:
                    rp = stack.enter_context(registry_process(remote_cfg, remote))
                    stack.enter_context(registry_process(local_cfg, local))
                    yield World(d, switch, admin, local, remote, remote_cfg, stack, rp)
        finally:
            admin.close()


@pytest.fixture
def node(netns: Callable[[], str]) -> Iterator[FakeNode]:
    n = build_node(netns)
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def shims(world: World) -> Iterator[list[Daemon]]:
    reset(world.admin)
    made: list[Daemon] = []
    yield made
    for d in made:
        d.stop()
    with RegistryClient(world.remote) as reg:  # what a killed shim left registered
        for nse in reg.find_endpoints():
            reg.unregister_endpoint(nse.name)
    for f in Path(world.tmp).glob("torshim.db*"):
        f.unlink()


@pytest.fixture
def agent_for(node: FakeNode) -> Iterator[Callable[..., Agent]]:
    made: list[Agent] = []

    def make(registry: str, **extra: Any) -> Agent:
        reg = {"url": f"tcp://{registry}", "timeout": 10, **extra}
        cfg = node.config(services=[], registry=reg)
        agent = Agent(parse_config(cfg))
        agent.start()
        made.append(agent)
        return agent

    yield make
    for a in made:
        for c in a.connections():
            a.close(c.id)
        a.stop()


def attach(agent: Agent, node: FakeNode, service: str, pod: PodRef = POD) -> Any:
    return agent.request(AttachRequest(ServiceRef.parse(service), node.vfs[0], node.pod(), pod=pod))


def trunk(world: World) -> frozenset[int]:
    return look(world.admin, P1)[P1].trunk_vlans


def test_local_domain_request_programs_the_port_and_close_cleans_it(
    world: World, shims: list[Daemon], node: FakeNode, agent_for: Callable[[str], Agent]
) -> None:
    shims.append(world.shim())
    before = node.shapes()
    agent = agent_for(world.remote)
    info = attach(agent, node, RED)
    assert trunk(world) == {100}
    assert info.addresses == ("10.100.0.3/29",) and info.mtu == 9000
    assert info.endpoint.startswith("torshim ")
    inside = links(info.netns.rsplit("/", 1)[1])
    assert inside["nsm0"]["mtu"] == 9000
    agent.close(info.id)
    assert trunk(world) == frozenset()
    assert node.shapes() == before


def test_another_domain_goes_through_the_pnsr_and_the_pnsmgr(
    world: World, shims: list[Daemon], node: FakeNode, agent_for: Callable[[str], Agent]
) -> None:
    shims.append(world.shim())
    with RegistryClient(world.local) as reg:
        (nse,) = reg.find_endpoints(service=f"{RED}@b.test")
    assert nse.name == "torshim@b.test" and nse.url == f"tcp://{world.local}"
    agent = agent_for(world.local)
    info = attach(agent, node, f"{RED}@b.test")
    assert trunk(world) == {100} and info.addresses == ("10.100.0.3/29",)
    agent.close(info.id)
    assert trunk(world) == frozenset()
    assert shims[0].store.connections() == []


def test_policy_refusal_touches_nothing(
    world: World, shims: list[Daemon], node: FakeNode, agent_for: Callable[[str], Agent]
) -> None:
    shims.append(world.shim())
    before = node.shapes()
    agent = agent_for(world.remote)
    with pytest.raises(ForbiddenError, match="may not use"):
        attach(agent, node, RED, PodRef("blue", "web", "uid-b"))
    assert node.shapes() == before and agent.connections() == []
    assert shims[0].store.connections() == [] and look(world.admin, P1)[P1] == PortConfig(P1)


def test_a_dead_endpoint_is_replaced_by_another(
    world: World, shims: list[Daemon], node: FakeNode, agent_for: Callable[[str], Agent]
) -> None:
    first = world.shim("torshim-a")
    shims.append(world.shim("torshim-b"))
    assert first.registrar is not None
    first.registrar.stop(unregister=False)  # dies without a word: still registered
    first.registrar = None
    first.stop()
    with RegistryClient(world.remote) as reg:
        assert {e.name for e in reg.find_endpoints(service=RED)} == {"torshim-a", "torshim-b"}
    agent = agent_for(world.remote)
    info = attach(agent, node, RED)
    assert info.endpoint.startswith("torshim-b ") and trunk(world) == {100}


def test_an_expired_registration_is_not_found(
    world: World, shims: list[Daemon], node: FakeNode, agent_for: Callable[[str], Agent]
) -> None:
    shim = world.shim(ttl=3)
    shims.append(shim)
    assert shim.registrar is not None
    shim.registrar.stop(unregister=False)  # stops refreshing
    deadline = time.monotonic() + 10
    with RegistryClient(world.remote) as reg:
        while reg.find_endpoints(service=RED) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert reg.find_endpoints(service=RED) == []
    agent = agent_for(world.remote)
    with pytest.raises(NotFoundError, match="no endpoint offers"):
        attach(agent, node, RED)


def test_connections_heal_after_shim_and_registry_restarts(
    world: World, shims: list[Daemon], node: FakeNode, agent_for: Callable[[str], Agent]
) -> None:
    shim = world.shim()
    agent = agent_for(world.remote)
    info = attach(agent, node, RED)
    shim.stop()  # unregisters; its store keeps the connection
    reset(world.admin)  # and the switch lost the VLAN meanwhile
    refresh = agent.endpoint.refresh  # type: ignore[attr-defined]
    assert refresh() == [info.id]  # nobody to refresh with: tried again later
    shims.append(world.shim())  # back: reconciles the port from its store at start
    assert refresh() == []
    assert trunk(world) == {100}
    assert [c.id for c in shims[-1].store.connections()] == [info.id]
    # the registry dies and comes back: its store kept the shim, whose refresh re-registers anyway
    world.restart_remote()
    with RegistryClient(world.remote) as reg:
        assert [e.name for e in reg.find_endpoints(service=RED)] == ["torshim"]
    assert refresh() == []
    assert agent.connection(info.id).state == "attached"  # the pod's interface was never touched


def test_a_connection_expired_at_the_endpoint_is_closed_on_the_node_too(
    world: World, shims: list[Daemon], node: FakeNode, agent_for: Callable[[str], Agent]
) -> None:
    from nsmgr.daemon import close_expired

    before = node.shapes()
    shim = world.shim(connection_ttl=3)
    shims.append(shim)
    agent = agent_for(world.remote)
    info = attach(agent, node, RED)
    assert close_expired(agent) == []  # not due yet
    shim.stop()  # the endpoint goes away: no refresh can succeed
    shims.remove(shim)
    refresh = agent.endpoint.refresh  # type: ignore[attr-defined]
    time.sleep(3.2)
    assert refresh() == [info.id]
    assert close_expired(agent) == [info.id]
    assert agent.connections() == [] and node.shapes() == before


def test_the_nodes_lldp_view_names_the_port_when_the_shim_map_does_not(
    world: World,
    shims: list[Daemon],
    node: FakeNode,
    agent_for: Callable[..., Agent],
    tmp_path: Path,
) -> None:
    shims.append(world.shim(port_map=[]))
    inv = tmp_path / "nicinventory.yaml"  # static entries, as nicinventory merges them with LLDP
    inv.write_text(
        "lldp: {enabled: false}\ntor_map: [{pf: '0000:3b:00.0', switch: tor1, port: Ethernet1/2}]\n"
    )
    agent = agent_for(world.remote, nicinventory_config=str(inv))
    info = attach(agent, node, RED)
    assert look(world.admin, "Ethernet1/2")["Ethernet1/2"].trunk_vlans == {100}
    assert trunk(world) == frozenset()
    agent.close(info.id)
    assert look(world.admin, "Ethernet1/2")["Ethernet1/2"].trunk_vlans == frozenset()
