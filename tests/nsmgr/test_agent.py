"""The agent on real netlink: veth ends stand in for VF netdevs in a node namespace, pods are
namespaces of their own. Every detach must leave the VF exactly as it was: name, ifindex, MAC,
MTU, admin state, altnames, namespace."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from nsmgr.agent import Agent
from nsmgr.config import parse_config
from nsmgr.errors import ConflictError, NotFoundError, RestoreError
from nsmgr.model import AttachRequest, ConnectionInfo, PodRef, ServiceRef
from nsmgr.netns import netns_id, own_netns_fd
from nsmgr.plumbing import INIT_NET_INO, fallback_name
from tests.conftest import needs_root
from tests.nsmgr.node import SERVICE, FakeNode, build_node, ip, links, shape

pytestmark = [needs_root, pytest.mark.netns]
POD = PodRef("default", "web-1", "uid-1")


def attach(agent: Agent, pci: str, pod: str, ifname: str = "nsm0", **kw: object) -> ConnectionInfo:
    req = AttachRequest(ServiceRef.parse(kw.pop("service", SERVICE)), pci, pod, ifname, POD, **kw)  # type: ignore[arg-type]
    return agent.request(req)


def pod_links(pod: str) -> dict[str, dict[str, object]]:
    return links(os.path.basename(pod))


def test_round_trip_restores_everything(node: FakeNode, make_agent: Callable[..., Agent]) -> None:
    ip("link", "set", "vf1", "mtu", "1600", "up", ns=node.ns)  # a VF that was up, odd MTU
    before = node.shapes()
    agent = make_agent()
    pod = node.pod()
    infos = [attach(agent, node.vfs[0], pod, "nsm0"), attach(agent, node.vfs[1], pod, "nsm1")]

    inside = pod_links(pod)
    assert set(node.shapes()) == {"vf2", "vf3"}  # gone from the node, no half-renamed leftover
    for info in infos:
        link = inside[info.ifname]
        assert (link["mtu"], link["address"], "UP" in link["flags"]) == (1400, info.mac, True)
        assert info.state == "attached" and info.generation == 1 and info.mechanism == "KERNEL"
    assert inside["nsm0"]["altnames"] == ["enp59s2"]  # altnames travel with the netdev
    addrs = ip("-4", "-o", "addr", "show", ns=os.path.basename(pod))
    assert "10.10.0.2/24" in addrs and "10.10.0.3/24" in addrs
    assert sorted(i.addresses[0] for i in infos) == ["10.10.0.2/24", "10.10.0.3/24"]
    assert "10.20.0.0/16 via 10.10.0.1 dev nsm0" in ip("route", ns=os.path.basename(pod))

    # the pod makes a mess: a stale altname, another MTU and MAC, an extra address, renamed
    p = os.path.basename(pod)
    ip("link", "property", "add", "dev", "nsm0", "altname", "podalt0", ns=p)
    ip("link", "set", "nsm1", "down", ns=p)
    ip("link", "set", "nsm1", "name", "eth7", "mtu", "1300", "address", "02:de:ad:be:ef:01", ns=p)
    ip("addr", "add", "192.0.2.9/24", "dev", "eth7", ns=p)

    for info in infos:
        agent.close(info.id)
    assert node.shapes() == before
    assert set(pod_links(pod)) == {"lo"}
    assert agent.connections() == []
    records, _ = agent.journal.read_all()
    assert {r.phase for r in records.values()} == {"free"}
    assert attach(agent, node.vfs[0], pod).generation == 2  # the next owner, the next generation


def test_vfio_vf_gets_pf_side_only(node: FakeNode, make_agent: Callable[..., Agent]) -> None:
    before = node.links()
    agent = make_agent()
    pod = node.pod()
    info = attach(agent, node.vfio[0], pod, service="open.example.com")
    assert (info.mechanism, info.ifname, info.pf_status, info.vf_index) == (
        "VFIO",
        "",
        "nothing",
        4,
    )
    assert set(pod_links(pod)) == {"lo"}
    agent.close(info.id)
    assert node.links().keys() == before.keys()
    assert agent.connections() == []


def test_same_connection_id_is_idempotent(node: FakeNode, make_agent: Callable[..., Agent]) -> None:
    agent = make_agent()
    pod, other = node.pod(), node.pod()
    first = attach(agent, node.vfs[0], pod, connection_id="pod-1/nsm0")
    assert first.id == "pod-1/nsm0"
    again = attach(agent, node.vfs[0], pod, connection_id="pod-1/nsm0")
    assert again == first
    with pytest.raises(ConflictError, match="exists for another namespace or interface name"):
        attach(agent, node.vfs[0], other, connection_id="pod-1/nsm0")
    with pytest.raises(ConflictError, match="connection id pod-1/nsm0 is already used for"):
        attach(agent, node.vfs[1], pod, "nsm1", connection_id="pod-1/nsm0")


def test_late_close_never_resets_the_next_owner(
    node: FakeNode, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent()
    pod_a, pod_b = node.pod(), node.pod()
    old = attach(agent, node.vfs[0], pod_a, connection_id="c")
    agent.close("c", generation=old.generation)
    new = attach(agent, node.vfs[0], pod_b, connection_id="c")  # same id, reused by a client
    assert new.generation == old.generation + 1
    with pytest.raises(ConflictError, match=r"generation 1 is stale: device .* at generation 2"):
        agent.close("c", generation=old.generation)
    assert "nsm0" in pod_links(pod_b)  # untouched
    with pytest.raises(NotFoundError, match="no connection 'nope'"):
        agent.close("nope")
    agent.close("c", generation=new.generation)
    assert "vf0" in node.shapes()


def test_name_taken_on_the_node_waits_then_is_restored(
    node: FakeNode, make_agent: Callable[..., Agent]
) -> None:
    before = node.shapes()
    agent = make_agent()
    info = attach(agent, node.vfs[0], node.pod())
    ip(
        "link", "add", "vf0", "type", "veth", "peer", "name", "clash0", ns=node.ns
    )  # someone took it
    with pytest.raises(RestoreError, match="its name vf0 is taken by another link"):
        agent.close(info.id)
    (pending,) = agent.connections()
    assert pending.state == "detaching" and "taken" in pending.error
    waiting = fallback_name(before["vf0"]["ifindex"])
    assert waiting in node.links()  # out of the pod, under a name of its own
    with pytest.raises(ConflictError, match="is being restored"):
        attach(agent, node.vfs[0], node.pod())
    ip("link", "del", "vf0", ns=node.ns)
    agent.reconcile()  # the periodic retry
    assert node.shapes() == before
    assert agent.connections() == []


def test_pod_namespace_deleted_while_attached(
    node: FakeNode, make_agent: Callable[..., Agent]
) -> None:
    before = node.shapes()
    agent = make_agent()
    events: list[tuple[str, str]] = []
    agent.subscribe(lambda kind, info: events.append((kind, info.id)))
    pod = node.pod()
    info = attach(agent, node.vfs[0], pod)
    ip("netns", "del", os.path.basename(pod))  # the agent still holds it: the VF is not lost
    agent.reconcile()
    assert node.shapes() == before
    assert agent.connections() == []
    assert events == [("UPDATE", info.id), ("DELETE", info.id)]


@pytest.mark.parametrize("refund_to", ["node", "init"])
def test_pod_namespace_gone_while_the_agent_was_down(
    node: FakeNode, netns: Callable[[], str], refund_to: str
) -> None:
    """After a restart no fd holds the pod's namespace: when it went, the kernel handed the VF to
    the initial namespace as devN (veth would be destroyed instead, so the test moves it as the
    kernel moves a physical netdev). The restarted agent finds it by ifindex and MAC."""
    if refund_to == "init":
        fd = own_netns_fd()
        try:
            if netns_id(fd).ino != INIT_NET_INO:
                pytest.skip("this test process is not in the initial network namespace")
        finally:
            os.close(fd)
    before = node.shapes()
    cfg = parse_config(node.config())
    first = Agent(cfg)
    first.start()
    pod = node.pod()
    info = attach(first, node.vfs[0], pod)
    first.stop()  # as a crash would: fds gone, the record stays "attached"
    refunded = f"dev{os.getpid() % 100000}"
    where = node.ns if refund_to == "node" else str(os.getpid())  # a pid: its namespace
    ip("link", "set", "nsm0", "netns", where, "name", refunded, ns=os.path.basename(pod))
    ip("netns", "del", os.path.basename(pod))
    second = Agent(cfg)
    second.start()  # replay: the pod is gone, so the connection is detached
    try:
        assert node.shapes() == before
        assert second.connections() == []
        assert refunded not in node.links()
        if refund_to == "init":
            assert refunded not in {link["ifname"] for link in links_here()}
    finally:
        second.stop()
        if refund_to == "init":  # only if the test failed: the pair goes with the node netns
            ip("link", "del", refunded, check=False)
    assert info.generation == 1


def links_here() -> list[dict[str, object]]:
    import json

    return json.loads(ip("-j", "link", "show"))


def test_twenty_concurrent_requests(netns: Callable[[], str]) -> None:
    node = build_node(netns, n_vfs=20, n_vfio=0)
    try:
        before = node.shapes()
        agent = Agent(parse_config(node.config()))
        agent.start()
        try:
            pods = [node.pod() for _ in range(10)]  # two VFs per pod, attached at the same time
            jobs = [(node.vfs[i], pods[i // 2], f"nsm{i % 2}") for i in range(20)]
            barrier = threading.Barrier(20)

            def go(job: tuple[str, str, str]) -> ConnectionInfo:
                barrier.wait()
                return attach(agent, *job)

            with ThreadPoolExecutor(20) as pool:
                infos = list(pool.map(go, jobs))
            assert all(i.state == "attached" for i in infos)
            assert len({i.addresses[0] for i in infos}) == 20
            assert len({i.mac for i in infos}) == 20
            for pod in pods:
                assert set(pod_links(pod)) == {"lo", "nsm0", "nsm1"}
            assert node.shapes() == {}
            with ThreadPoolExecutor(20) as pool:
                list(pool.map(lambda i: agent.close(i.id), infos))
            assert node.shapes() == before
            assert agent.connections() == []
        finally:
            agent.stop()
    finally:
        node.cleanup()


def test_restart_keeps_live_connections(node: FakeNode) -> None:
    cfg = parse_config(node.config())
    first = Agent(cfg)
    first.start()
    pod = node.pod()
    info = attach(first, node.vfs[0], pod)
    first.stop()
    second = Agent(cfg)
    second.start()
    try:
        (kept,) = second.connections()
        assert kept == info
        again = attach(second, node.vfs[1], pod, "nsm1")
        assert again.addresses != info.addresses  # the recorded lease was taken back first
        second.close(info.id)
        second.close(again.id)
        assert set(pod_links(pod)) == {"lo"}
    finally:
        second.stop()


def test_vf_moved_away_inside_the_pod_is_reported_failed(
    node: FakeNode, make_agent: Callable[..., Agent]
) -> None:
    agent = make_agent()
    pod = node.pod()
    info = attach(agent, node.vfs[0], pod)
    ip("link", "set", "nsm0", "name", "other0", ns=os.path.basename(pod))  # not ours to fix
    agent.reconcile()
    (failed,) = agent.connections()
    assert failed.state == "failed" and "nsm0 is no longer in the pod" in failed.error
    agent.close(info.id)  # found by ifindex all the same
    assert "vf0" in node.shapes()


def test_one_agent_per_state_dir(node: FakeNode, make_agent: Callable[..., Agent]) -> None:
    make_agent()
    second = Agent(parse_config(node.config()))
    with pytest.raises(Exception, match="another nsmgr is running"):
        second.start()
    second.stop()


def test_shape_helper_sees_altnames(node: FakeNode) -> None:
    assert shape(node.links()["vf0"])["altnames"] == ["enp59s2"]


def test_a_stopped_agent_refuses_with_unavailable(node: FakeNode) -> None:
    from nsmgr.errors import StoppingError
    from nsmgr.server import status_of

    agent = Agent(parse_config(node.config()))
    agent.start()
    agent.stop()
    with pytest.raises(StoppingError, match="nsmgr is stopping") as e:
        attach(agent, node.vfs[0], node.pod())
    assert status_of(e.value).name == "UNAVAILABLE"
