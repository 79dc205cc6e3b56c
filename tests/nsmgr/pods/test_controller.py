"""The controller against real gRPC stand-ins (kubelet pod-resources, CRI), a fake pod source and
a recording agent. Most tests drive `reconcile()` by hand, so every call is deterministic; those
about timing (retries, events) run the worker thread and wait with bounds, never sleep."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from nsmgr.model import ConnectionInfo, PodRef
from nsmgr.pods.annotations import NSM_KEY, SEED_KEY
from nsmgr.pods.controller import PodController, connection_id, owner_uid
from nsmgr.pods.netns import NetnsResolver
from nsmgr.pods.podresources import PodResourcesClient
from nsmgr.pods.podsource import FakePodSource, Pod
from tests.nsmgr.pods.conftest import add_process, netns_file
from tests.nsmgr.pods.standins import WAIT, CriStandIn, PodResourcesStandIn, RecordingAgent

NODE = "node-a"
RES = "example.com/100g"
A, B, C = "0000:3b:02.0", "0000:3b:02.1", "0000:af:02.0"


@dataclass
class World:
    agent: RecordingAgent
    source: FakePodSource
    kubelet: PodResourcesStandIn
    runtime: CriStandIn
    resources: PodResourcesClient
    resolver: NetnsResolver
    proc_root: Path
    controllers: list[PodController] = field(default_factory=list)

    def controller(self, **kw: object) -> PodController:
        args: dict[str, object] = {
            "retry_initial": 0.02,
            "retry_max": 0.2,
            "resync_seconds": 3600.0,
        }
        args.update(kw)
        c = PodController(
            self.agent,
            self.source,
            self.resources,
            self.resolver,
            NODE,
            **args,  # type: ignore[arg-type]
        )
        self.controllers.append(c)
        return c

    def pod(
        self,
        name: str,
        annotations: dict[str, str],
        vfs: tuple[str, ...] = (),
        *,
        node: str = NODE,
        admitted: bool = True,
        sandbox: bool = True,
    ) -> Pod:
        """A pod as the API server, kubelet and the runtime know it once it runs."""
        pod = Pod("ns1", name, f"uid-{name}", node, annotations, "Running")
        self.source.add(pod)
        if admitted:
            self.kubelet.admit("ns1", name, {RES: list(vfs)})
        if sandbox:
            self.sandbox(pod)
        return pod

    def sandbox(self, pod: Pod, tag: str = "") -> str:
        ns = str(netns_file(self.proc_root, f"cni-{pod.name}{tag}"))
        self.runtime.run_pod(pod.uid, pod.name, pod.namespace, netns=ns)
        return ns


@pytest.fixture
def world(
    kubelet: PodResourcesStandIn,
    runtime: CriStandIn,
    resources: PodResourcesClient,
    resolver: NetnsResolver,
    proc_root: Path,
) -> Iterator[World]:
    source = FakePodSource(NODE)
    source.start()
    w = World(RecordingAgent(), source, kubelet, runtime, resources, resolver, proc_root)
    try:
        yield w
    finally:
        for c in w.controllers:
            c.stop()


def attached(
    pod: Pod, index: int, pci: str, service: str, ifname: str, netns: str
) -> ConnectionInfo:
    return ConnectionInfo(
        id=connection_id(pod.uid, index),
        service=service,
        pci_address=pci,
        ifname=ifname,
        netns=netns,
        state="attached",
        mechanism="KERNEL",
        pod=PodRef(pod.namespace, pod.name, pod.uid),
    )


# --- what is asked -------------------------------------------------------------------------------


def test_seed_form_pairs_services_with_vfs_in_order(world: World) -> None:
    pod = world.pod("p", {SEED_KEY: "a.example.com, b@dc.example.org"}, (B, A))
    ctl = world.controller()
    result = ctl.reconcile()
    assert result.requested == ["uid-p-0", "uid-p-1"]
    first, second = world.agent.requests
    netns = str(world.proc_root.parent / "netns" / "cni-p")
    assert (str(first.service), first.pci_address, first.ifname, first.netns) == (
        "a.example.com",
        A,
        "nsm0",
        netns,
    )
    assert (str(second.service), second.pci_address, second.ifname) == (
        "b@dc.example.org",
        B,
        "nsm1",
    )
    assert first.pod == PodRef("ns1", "p", pod.uid)
    assert first.connection_id == "uid-p-0"
    # nothing changed: nothing is asked again
    assert ctl.reconcile().requested == []
    assert len(world.agent.calls) == 2


def test_nsm_form_carries_ifname_and_labels(world: World) -> None:
    world.pod("p", {NSM_KEY: "kernel://svc@dc.example.org/nsm-1?app=x"}, (A,))
    world.controller().reconcile()
    (req,) = world.agent.requests
    assert (str(req.service), req.ifname, req.labels) == (
        "svc@dc.example.org",
        "nsm-1",
        {"app": "x"},
    )


def test_more_services_than_vfs_says_which_got_none(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.pod("p", {SEED_KEY: "a,b,c"}, (A,))
    ctl = world.controller()
    ctl.reconcile()
    ctl.reconcile()
    assert [r.pci_address for r in world.agent.requests] == [A]
    lines = [r.getMessage() for r in caplog.records if "got no VF" in r.getMessage()]
    assert lines == [
        "pod ns1/p: service b (nsm1) got no VF: the pod holds 1 VF(s) for 3 services",
        "pod ns1/p: service c (nsm2) got no VF: the pod holds 1 VF(s) for 3 services",
    ]


def test_fewer_services_than_vfs_leaves_the_rest_alone(world: World) -> None:
    world.pod("p", {SEED_KEY: "a"}, (C, B))
    world.controller().reconcile()
    assert [(r.connection_id, r.pci_address) for r in world.agent.requests] == [("uid-p-0", B)]


def test_vfio_request_attached_otherwise_is_reported(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.agent.mechanism[A] = "KERNEL"
    world.pod("p", {NSM_KEY: "vfio://dpdk-net"}, (A,))
    world.controller().reconcile()
    assert world.agent.count("request", "uid-p-0") == 1
    assert any(
        "asked for vfio:// but the VF 0000:3b:02.0 is attached as KERNEL" in r.getMessage()
        for r in caplog.records
    )


# --- what is ignored -----------------------------------------------------------------------------


def test_other_nodes_and_unannotated_pods_are_ignored(world: World) -> None:
    world.source.node = None  # a source that does not filter: the controller still must
    world.pod("far", {SEED_KEY: "a"}, (A,), node="node-b")
    world.pod("plain", {"app": "x"}, (B,))
    result = world.controller().reconcile()
    assert result.pods == 2 and result.waiting == {}
    assert world.agent.calls == []


def test_bad_annotation_is_one_line_and_no_request(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.pod("p", {SEED_KEY: "svc@"}, (A,))
    ctl = world.controller()
    ctl.reconcile()
    ctl.reconcile()
    assert world.agent.calls == []
    lines = [r for r in caplog.records if r.name == "nsmgr.pods.controller"]
    assert [r.getMessage() for r in lines] == [
        "pod ns1/p: annotation ns.networkservicemesh.io: network service 'svc@' has a bad "
        "domain after '@'"
    ]
    assert lines[0].levelno == logging.WARNING


# --- when the pod goes ---------------------------------------------------------------------------


def test_terminating_and_finished_pods_are_closed(world: World) -> None:
    p = world.pod("p", {SEED_KEY: "a,b"}, (A, B))
    q = world.pod("q", {SEED_KEY: "a"}, (C,))
    ctl = world.controller()
    ctl.reconcile()
    world.source.modify(replace(p, deletion_timestamp="2024-05-01T10:00:00Z"))
    world.source.modify(replace(q, phase="Succeeded"))
    result = ctl.reconcile()
    assert sorted(result.closed) == ["uid-p-0", "uid-p-1", "uid-q-0"]
    assert world.agent.conns == {}


def test_annotation_removed_or_broken_closes(world: World) -> None:
    p = world.pod("p", {SEED_KEY: "a"}, (A,))
    q = world.pod("q", {SEED_KEY: "a"}, (B,))
    ctl = world.controller()
    ctl.reconcile()
    world.source.modify(replace(p, annotations={}))
    world.source.modify(replace(q, annotations={SEED_KEY: "a,,"}))
    assert sorted(ctl.reconcile().closed) == ["uid-p-0", "uid-q-0"]


def test_deleted_pod_is_closed_by_the_event(world: World) -> None:
    p = world.pod("p", {SEED_KEY: "a,b"}, (A, B))
    ctl = world.controller()
    ctl.start()
    world.agent.wait_for(lambda a: len(a.conns) == 2)
    world.source.delete(p)
    world.agent.wait_for(lambda a: a.conns == {})
    assert sorted(c for kind, c in world.agent.calls if kind == "close") == ["uid-p-0", "uid-p-1"]


# --- changes -------------------------------------------------------------------------------------


def test_changed_service_is_closed_then_requested(world: World) -> None:
    p = world.pod("p", {SEED_KEY: "a"}, (A,))
    ctl = world.controller()
    ctl.reconcile()
    world.source.modify(replace(p, annotations={SEED_KEY: "b"}))
    ctl.reconcile()
    assert world.agent.calls == [
        ("request", "uid-p-0"),
        ("close", "uid-p-0"),
        ("request", "uid-p-0"),
    ]
    assert world.agent.conns["uid-p-0"].service == "b"


def test_new_sandbox_refreshes_the_connection(world: World) -> None:
    p = world.pod("p", {SEED_KEY: "a"}, (A,))
    ctl = world.controller()
    ctl.reconcile()
    netns = world.sandbox(p, tag="-2")  # the sandbox was re-created: a new namespace
    ctl.reconcile()
    assert world.agent.calls == [("request", "uid-p-0"), ("request", "uid-p-0")]
    assert world.agent.conns["uid-p-0"].netns == netns


def test_kubelet_away_keeps_running_connections(world: World) -> None:
    world.pod("p", {SEED_KEY: "a"}, (A,))
    ctl = world.controller()
    ctl.reconcile()
    world.kubelet.stop()
    result = ctl.reconcile()
    assert result.closed == [] and "UNAVAILABLE" in result.waiting["uid-p"]
    assert list(world.agent.conns) == ["uid-p-0"]


# --- restarts ------------------------------------------------------------------------------------


def test_restart_closes_orphans_and_requests_missing_exactly_once(world: World) -> None:
    a = world.pod("a", {SEED_KEY: "svc-a"}, (A,))
    b = world.pod("b", {SEED_KEY: "svc-b"}, (B,))
    gone = Pod("ns1", "gone", "uid-gone", NODE)
    netns_a = str(world.proc_root.parent / "netns" / "cni-a")
    foreign = ConnectionInfo("cli-7", "svc-x", C, "eth9", "/run/netns/x", "attached", "KERNEL")
    # made for pod a by someone else (nsmgr's own API): its id is not <uid>-<n>
    by_hand = replace(attached(a, 0, B, "svc-h", "eth7", netns_a), id="uid-a-manual")
    # what the agent restored from its journal after a restart
    world.agent.conns = {
        c.id: c
        for c in [
            attached(a, 0, A, "svc-a", "nsm0", netns_a),  # still wanted, as it is
            attached(gone, 0, C, "svc-z", "nsm0", "/run/netns/old"),  # its pod went meanwhile
            foreign,  # not ours: no pod
            by_hand,  # not ours: not our kind of id
        ]
    }
    ctl = world.controller()
    first = ctl.reconcile()
    assert (first.closed, first.requested) == (["uid-gone-0"], ["uid-b-0"])
    again = ctl.reconcile()
    assert (again.closed, again.requested) == ([], [])
    assert world.agent.calls == [("close", "uid-gone-0"), ("request", "uid-b-0")]
    assert sorted(world.agent.conns) == ["cli-7", "uid-a-0", "uid-a-manual", "uid-b-0"]
    assert owner_uid(foreign) is None and owner_uid(by_hand) is None
    assert owner_uid(world.agent.conns["uid-b-0"]) == b.uid


def test_start_reconciles_on_its_own(world: World) -> None:
    world.pod("b", {SEED_KEY: "svc-b"}, (B,))
    gone = Pod("ns1", "gone", "uid-gone", NODE)
    world.agent.conns = {"uid-gone-0": attached(gone, 0, C, "svc-z", "nsm0", "/run/netns/old")}
    world.controller().start()
    world.agent.wait_for(lambda a: sorted(a.conns) == ["uid-b-0"])
    assert world.agent.count("request", "uid-b-0") == 1


def test_nothing_is_closed_before_the_pod_list_is_complete(world: World) -> None:
    source = FakePodSource(NODE, synced=False)
    source.start()
    world.source = source
    gone = Pod("ns1", "gone", "uid-gone", NODE)
    world.agent.conns = {"uid-gone-0": attached(gone, 0, C, "svc-z", "nsm0", "/run/netns/old")}
    ctl = world.controller()
    assert not ctl.reconcile().synced
    assert ctl.sync_pod("uid-gone").closed == []
    assert world.agent.calls == []
    source.sync()
    assert ctl.reconcile().closed == ["uid-gone-0"]


# --- not ready yet, failures ---------------------------------------------------------------------


def test_pod_before_its_devices_and_sandbox_is_retried_until_ready(world: World) -> None:
    ctl = world.controller()
    ctl.start()
    p = world.pod("p", {SEED_KEY: "a"}, admitted=False, sandbox=False)
    wait_calls(world.kubelet.calls, "Get", 2)  # asked, and asked again
    assert world.agent.calls == []
    world.kubelet.admit("ns1", "p", {RES: [A]})
    wait_calls(world.runtime.calls, "ListPodSandbox", 2)  # devices there, sandbox not yet
    assert world.agent.calls == []
    world.sandbox(p)
    world.agent.wait_for(lambda a: "uid-p-0" in a.conns)
    assert world.agent.count("request", "uid-p-0") == 1


def test_agent_failures_are_retried_and_logged_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.agent.fail_requests = 3
    world.pod("p", {SEED_KEY: "a"}, (A,))
    world.controller().start()
    world.agent.wait_for(lambda a: "uid-p-0" in a.conns)
    assert world.agent.count("request", "uid-p-0") == 4
    failures = [r for r in caplog.records if "agent busy" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING


def test_refused_request_is_an_error_line_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.agent.refuse[A] = "device 0000:3b:02.0 is not a VF of this node"
    world.pod("p", {SEED_KEY: "a"}, (A,))
    ctl = world.controller()
    first, second = ctl.reconcile(), ctl.reconcile()
    assert "is not a VF" in first.waiting["uid-p"] and second.waiting == first.waiting
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "pod ns1/p: a (nsm0) on 0000:3b:02.0: device 0000:3b:02.0 is not a VF of this node"
    ]


def test_a_broken_agent_never_stops_the_loop(world: World) -> None:
    class Flaky(RecordingAgent):
        broken = 2

        def connections(self) -> list[ConnectionInfo]:
            if self.broken:
                self.broken -= 1
                raise RuntimeError("journal locked")
            return super().connections()

    world.agent = Flaky()
    world.pod("p", {SEED_KEY: "a"}, (A,))
    world.controller().start()
    world.agent.wait_for(lambda a: "uid-p-0" in a.conns)


def test_runtime_away_uses_proc(world: World, sockdir: str) -> None:
    world.resolver = NetnsResolver(f"unix://{sockdir}/none.sock", str(world.proc_root))
    try:
        p = world.pod("p", {SEED_KEY: "a"}, (A,), sandbox=False)
        ns = str(netns_file(world.proc_root, "pause"))
        add_process(world.proc_root, 4242, f"0::/kubepods/besteffort/pod{p.uid}/abc\n", ns)
        world.controller().reconcile()
    finally:
        world.resolver.close()
    (req,) = world.agent.requests
    assert req.netns == str(world.proc_root / "4242" / "ns" / "net")


def wait_calls(calls: list[str], name: str, n: int) -> None:
    """Bounded wait until `calls` holds `name` n times (the stand-ins append from gRPC threads)."""
    deadline = time.monotonic() + WAIT
    while calls.count(name) < n:
        assert time.monotonic() < deadline, f"{name} called {calls.count(name)} times, not {n}"
        time.sleep(0.005)
