"""The pod integration driving the real agent: a pod with the seed's annotation gets its VF in its
own network namespace, configured, and the VF comes back intact when the pod goes. Real netlink
(veth stand-ins on a node namespace), real gRPC to the kubelet and runtime stand-ins; only the API
server is the in-memory FakePodSource."""

from __future__ import annotations

import time
from collections.abc import Callable

from nsmgr.agent import Agent
from nsmgr.pods import FakePodSource, Pod, PodsConfig, start_pod_integration
from nsmgr.pods.annotations import SEED_KEY
from tests.nsmgr.node import SERVICE, FakeNode, links
from tests.nsmgr.pods.standins import CriStandIn, PodResourcesStandIn

NODE = "node-a"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_annotated_pod_gets_its_vf_and_gives_it_back(
    node: FakeNode,
    make_agent: Callable[..., Agent],
    kubelet: PodResourcesStandIn,
    runtime: CriStandIn,
) -> None:
    before = node.shapes()
    agent = make_agent()
    source = FakePodSource(NODE)
    cfg = PodsConfig(
        node_name=NODE,
        podresources_socket=kubelet.socket_path,
        cri_socket="unix://" + runtime.socket_path,
        retry_initial_seconds=0.02,
        retry_max_seconds=0.2,
        resource_prefixes=["example.com"],
    )
    handle = start_pod_integration(agent, cfg, source=source)
    try:
        netns = node.pod()
        pod = Pod("myns", "web", "uid-web", NODE, {SEED_KEY: SERVICE}, "Running")
        # the order kubelet follows: admission (devices), then the sandbox, while the API watch
        # already shows the pod
        source.add(pod)
        kubelet.admit("myns", "web", {"example.com/100g": [node.vfs[2]]})
        runtime.run_pod(pod.uid, pod.name, pod.namespace, netns=netns)
        wait_for(lambda: any(c.state == "attached" for c in agent.connections()), "the attach")
        (conn,) = agent.connections()
        assert conn.id == "uid-web-0" and conn.pci_address == node.vfs[2]
        assert conn.pod is not None and conn.pod.uid == "uid-web"
        inside = links(netns.rsplit("/", 1)[1])
        assert inside["nsm0"]["mtu"] == 1400 and "UP" in inside["nsm0"]["flags"]
        assert "vf2" not in node.shapes()
        source.delete(pod)
        wait_for(lambda: agent.connections() == [], "the detach")
        assert node.shapes() == before  # name, MAC, MTU, state and altnames as they were
    finally:
        handle.stop()
