"""The local NSM API over the unix socket: Request/Close as an NSM client sends them, the
MonitorConnection stream, and the status codes of refusals."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest

from nsmgr.agent import Agent
from nsmgr.netns import netns_id, open_netns
from nsmgr.server import NsmServer, info_from_proto
from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc
from tests.conftest import needs_root
from tests.nsmgr.node import SERVICE, FakeNode

pytestmark = [needs_root, pytest.mark.netns]
POD_LABELS = {"podNamespace": "default", "podName": "web-1", "podUID": "u1"}


@pytest.fixture
def api(node: FakeNode, make_agent: Callable[..., Agent]) -> Iterator[grpc.Channel]:
    server = NsmServer(make_agent(), node.socket, workers=4, node="node-a")
    server.start()
    channel = grpc.insecure_channel("unix:" + node.socket)
    try:
        yield channel
    finally:
        channel.close()
        server.stop()
    assert not os.path.exists(node.socket)


def request(
    pci: str, params: dict[str, str], service: str = SERVICE, **conn: object
) -> pb.NetworkServiceRequest:
    mech = pb.Mechanism(cls="LOCAL", type="KERNEL", parameters={"pciAddress": pci, **params})
    labels = conn.pop("labels", POD_LABELS)
    return pb.NetworkServiceRequest(
        connection=pb.Connection(network_service=service, labels=labels, **conn),  # type: ignore[arg-type]
        mechanism_preferences=[mech],
    )


def test_request_with_an_inode_url_and_close(node: FakeNode, api: grpc.Channel) -> None:
    ns = pb_grpc.NetworkServiceStub(api)
    pod = node.pod()
    fd = open_netns(pod)
    url = netns_id(fd).url
    os.close(fd)
    conn = ns.Request(request(node.vfs[0], {"inodeURL": url, "name": "net1"}), timeout=10)
    assert conn.mechanism.type == "KERNEL" and conn.mechanism.cls == "LOCAL"
    params = dict(conn.mechanism.parameters)
    assert (params["name"], params["pciAddress"], params["inodeURL"]) == ("net1", node.vfs[0], url)
    assert params["netnsURL"] == f"file://{pod}" and params["pfName"] == "pf0"
    ctx = conn.context
    assert list(ctx.ip_context.src_ip_addrs) == ["10.10.0.2/24"]
    assert [(r.prefix, r.nextHop) for r in ctx.ip_context.src_routes] == [
        ("10.20.0.0/16", "10.10.0.1")
    ]
    assert list(ctx.dns_context.configs[0].dns_server_ips) == ["10.10.0.53"]
    assert ctx.MTU == 1400 and ctx.ethernet_context.src_mac.startswith("02:")
    assert conn.state == pb.UP and conn.network_service_endpoint_name == "local:myns.example.com"
    hop = conn.path.path_segments[0]
    assert (hop.name, hop.id, dict(hop.metrics)) == (
        "nsmgr-node-a",
        conn.id,
        {"state": "attached", "generation": "1"},
    )
    assert dict(conn.labels) == POD_LABELS
    info = info_from_proto(conn)
    assert (info.pod and info.pod.name, info.ifname, info.netns) == ("web-1", "net1", pod)
    ns.Close(conn, timeout=10)  # the connection as received: its generation comes back
    assert "vf0" in node.shapes()


def test_monitor_streams_initial_state_then_events(node: FakeNode, api: grpc.Channel) -> None:
    ns, mon = pb_grpc.NetworkServiceStub(api), pb_grpc.MonitorConnectionStub(api)
    pod = node.pod()
    first = ns.Request(request(node.vfs[0], {"netnsURL": pod}), timeout=10)
    events: queue.SimpleQueue[pb.ConnectionEvent] = queue.SimpleQueue()
    stream = mon.MonitorConnections(pb.MonitorScopeSelector(), timeout=30)

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for event in stream:
                events.put(event)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        initial = events.get(timeout=10)
        assert initial.type == pb.INITIAL_STATE_TRANSFER and list(initial.connections) == [first.id]
        second = ns.Request(request(node.vfs[1], {"netnsURL": pod, "name": "nsm1"}), timeout=10)
        update = events.get(timeout=10)
        assert update.type == pb.UPDATE and list(update.connections) == [second.id]
        ns.Close(pb.Connection(id=first.id), timeout=10)
        delete = events.get(timeout=10)
        assert delete.type == pb.DELETE and list(delete.connections) == [first.id]
        assert delete.connections[first.id].mechanism.parameters["pciAddress"] == node.vfs[0]
    finally:
        stream.cancel()
        reader.join(5)


@pytest.mark.parametrize(
    ("make", "code", "details"),
    [
        (lambda n, p: request(n.vfs[1], {"netnsURL": p}, service="nope.example.com"),
         grpc.StatusCode.NOT_FOUND, "unknown network service nope.example.com"),
        (lambda n, p: request(n.vfs[1], {"netnsURL": p, "name": "x" * 20}),
         grpc.StatusCode.INVALID_ARGUMENT, "interface name 'xxxxxxxxxxxxxxxxxxxx' is invalid"),
        (lambda n, p: request(n.vfs[0], {"netnsURL": p}),
         grpc.StatusCode.FAILED_PRECONDITION, "is held by connection"),
        (lambda n, p: request(n.vfs[1], {"netnsURL": p}, labels={"podNamespace": "x", "podName": "y"}),
         grpc.StatusCode.PERMISSION_DENIED, "does not admit namespace 'x'"),
        (lambda n, p: request("", {"netnsURL": p}),
         grpc.StatusCode.INVALID_ARGUMENT, "mechanism parameter pciAddress is missing"),
        (lambda n, p: request(n.vfs[1], {}),
         grpc.StatusCode.INVALID_ARGUMENT, "mechanism parameter netnsURL or inodeURL is missing"),
        (lambda n, p: request(n.vfs[1], {"inodeURL": "inode://1/2"}),
         grpc.StatusCode.NOT_FOUND, "no network namespace inode://1/2 on this node"),
        (lambda n, p: request(n.vfs[1], {"netnsURL": "/nonexistent/ns"}),
         grpc.StatusCode.NOT_FOUND, "network namespace /nonexistent/ns does not exist"),
        (lambda n, p: request(n.vfs[1], {"netnsURL": p}, service=""),
         grpc.StatusCode.INVALID_ARGUMENT, "connection.network_service is empty"),
    ],
)  # fmt: skip
def test_refusals_map_to_status_codes(
    node: FakeNode,
    api: grpc.Channel,
    make: Callable[[FakeNode, str], pb.NetworkServiceRequest],
    code: grpc.StatusCode,
    details: str,
) -> None:
    ns = pb_grpc.NetworkServiceStub(api)
    ns.Request(request(node.vfs[0], {"netnsURL": node.pod()}), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        ns.Request(make(node, node.pod()), timeout=10)
    assert e.value.code() == code
    assert details in e.value.details() and "\n" not in e.value.details()


def test_close_refusals(node: FakeNode, api: grpc.Channel) -> None:
    ns = pb_grpc.NetworkServiceStub(api)
    conn = ns.Request(request(node.vfs[0], {"netnsURL": node.pod()}, id="c1"), timeout=10)
    stale = pb.Connection()
    stale.CopyFrom(conn)
    stale.path.path_segments[0].metrics["generation"] = "7"
    with pytest.raises(grpc.RpcError) as e:
        ns.Close(stale, timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "generation 7 is stale" in e.value.details()
    for bad, code in ((pb.Connection(id="nope"), grpc.StatusCode.NOT_FOUND),
                      (pb.Connection(), grpc.StatusCode.INVALID_ARGUMENT)):  # fmt: skip
        with pytest.raises(grpc.RpcError) as e:
            ns.Close(bad, timeout=10)
        assert e.value.code() == code
    ns.Close(conn, timeout=10)
