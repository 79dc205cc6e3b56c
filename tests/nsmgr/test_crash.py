"""SIGKILL of `nsmgr serve` between any two steps, then a restart: the replay rolls back every
half-done attach and finishes every half-done detach, so the VF ends exactly as it was (name,
ifindex, MAC, MTU, admin state, altnames, namespace), or, killed once attached, stays attached.

NSMGR_CRASH_AT=<phase> makes the daemon kill itself right after that phase's record is durable,
i.e. after the step before it and before the step it names."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import grpc
import pytest

from nsmgr.journal import CRASH_ENV, Journal
from sriov_nsm_wire.networkservice import networkservice_pb2 as pb
from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc
from tests.conftest import needs_root
from tests.nsmgr.node import SERVICE, FakeNode, Serve, ip, links

pytestmark = [needs_root, pytest.mark.netns]
ATTACH = ["attach:endpoint", "attach:pf", "attach:move", "attach:configure", "attached"]
DETACH = ["detach:netns", "detach:host", "free"]


def request(node: FakeNode, pod: str) -> pb.NetworkServiceRequest:
    params = {"pciAddress": node.vfs[0], "netnsURL": pod, "name": "nsm0"}
    return pb.NetworkServiceRequest(
        connection=pb.Connection(
            network_service=SERVICE, labels={"podNamespace": "default", "podName": "web-1"}
        ),
        mechanism_preferences=[pb.Mechanism(cls="LOCAL", type="KERNEL", parameters=params)],
    )


def connections(channel: grpc.Channel) -> list[pb.Connection]:
    stream = pb_grpc.MonitorConnectionStub(channel).MonitorConnections(
        pb.MonitorScopeSelector(), timeout=10
    )
    try:
        return list(next(stream).connections.values())
    finally:
        stream.cancel()


@pytest.fixture
def channel(node: FakeNode) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel("unix:" + node.socket)
    try:
        yield ch
    finally:
        ch.close()


@pytest.mark.parametrize("phase", ATTACH + DETACH)
def test_sigkill_between_steps_then_restart(node: FakeNode, phase: str) -> None:
    node.services[0]["vlan"] = 100  # PF-side settings (skipped with pf_side none): attach:pf runs
    config = node.write_config()
    ip("link", "set", "vf0", "mtu", "1700", ns=node.ns)
    before = node.shapes()
    pod = node.pod()
    crashing = Serve(config, env={CRASH_ENV: phase}).start(node.socket)
    try:
        with grpc.insecure_channel("unix:" + node.socket) as ch:
            ns = pb_grpc.NetworkServiceStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                conn = ns.Request(request(node, pod), timeout=20)
                assert phase in DETACH, "the request should have died"
                ns.Close(conn, timeout=20)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert crashing.wait() == -signal.SIGKILL, crashing.log
    finally:
        crashing.stop()
    rec = Journal(node.state_dir).read(node.vfs[0])
    assert rec is not None and rec.phase == phase  # killed right after that record

    with (
        Serve(config).start(node.socket) as again,
        grpc.insecure_channel("unix:" + node.socket) as ch,
    ):
        live = connections(ch)
        if phase == "attached":  # the work was done: it is kept, and closes normally
            (conn,) = live
            assert conn.path.path_segments[0].metrics["state"] == "attached"
            assert "10.10.0.2/24" in ip("-4", "addr", "show", "nsm0", ns=os.path.basename(pod))
            pb_grpc.NetworkServiceStub(ch).Close(conn, timeout=20)
        else:
            assert live == [], again.log
        assert node.shapes() == before, again.log
        assert set(links(os.path.basename(pod))) == {"lo"}
    rec = Journal(node.state_dir).read(node.vfs[0])
    assert rec is not None and rec.phase == "free" and rec.generation == 1
