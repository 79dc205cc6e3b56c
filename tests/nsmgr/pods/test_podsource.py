"""Pod sources: the in-memory fake, and the Kubernetes adapter fed what the kubernetes client
yields (event dicts with `type`, `object`, `raw_object`; ApiException with `.status`), once with
scripted streams and once through the client's own Watch over a fake HTTP response."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from nsmgr.pods.errors import PodSourceError
from nsmgr.pods.kubesource import KubernetesPodSource, pod_from_object
from nsmgr.pods.podsource import FakePodSource, Pod, PodEvent
from tests.nsmgr.pods.standins import WAIT

NODE = "node-a"


def pod_json(
    name: str,
    uid: str,
    *,
    node: str = NODE,
    rv: str = "1",
    phase: str = "Running",
    annotations: dict[str, str] | None = None,
    deleting: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns1", "uid": uid, "resourceVersion": rv}
    if annotations:
        meta["annotations"] = annotations
    if deleting:
        meta["deletionTimestamp"] = deleting
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c0", "image": "x"}]},
        "status": {"phase": phase},
    }


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    # the client puts the decoded model in `object` and the JSON in `raw_object`; the adapter
    # must read the JSON, so `object` here is something it cannot use
    return {"type": kind, "object": SimpleNamespace(decoded=True), "raw_object": obj}


def gone() -> dict[str, Any]:
    status = {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410}
    return {"type": "ERROR", "object": status, "raw_object": status | {"message": "too old"}}


class ApiError(Exception):
    """What matters of kubernetes.client.ApiException: the HTTP status in `.status`."""

    def __init__(self, status: int) -> None:
        super().__init__(f"({status})")
        self.status = status


def pod_list(rv: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PodList", "metadata": {"resourceVersion": rv}, "items": list(items)}


class FakeCore:
    """CoreV1Api.list_pod_for_all_namespaces: scripted answers, the last one repeats."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Script:
    """Watch streams, one per watch request; when they run out a stream blocks until stopped."""

    def __init__(self, *streams: list[Any]) -> None:
        self.streams = list(streams)
        self.calls: list[dict[str, Any]] = []
        self.idle = threading.Event()

    def watch(self) -> FakeWatch:
        return FakeWatch(self)


class FakeWatch:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.stopped = threading.Event()

    def stream(self, func: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        self.script.calls.append(kwargs)
        if not self.script.streams:
            self.script.idle.set()
            self.stopped.wait(WAIT)
            return
        for item in self.script.streams.pop(0):
            if isinstance(item, Exception):
                raise item
            yield item

    def stop(self) -> None:
        self.stopped.set()


def recorder(source: Any) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []

    def on(e: PodEvent) -> None:
        seen.append((e.type, e.pod.name, e.pod.phase))

    source.subscribe(on)
    return seen


# --- translation ---------------------------------------------------------------------------------


def test_pod_from_object() -> None:
    obj = pod_json(
        "p",
        "u1",
        rv="42",
        phase="Pending",
        annotations={"ns.networkservicemesh.io": "svc"},
        deleting="2024-05-01T10:00:00Z",
    )
    assert pod_from_object(obj) == Pod(
        namespace="ns1",
        name="p",
        uid="u1",
        node=NODE,
        annotations={"ns.networkservicemesh.io": "svc"},
        phase="Pending",
        deletion_timestamp="2024-05-01T10:00:00Z",
        resource_version="42",
    )
    bare = pod_from_object({"metadata": {"name": "q", "namespace": "n", "uid": "u2"}})
    assert (bare.node, bare.phase, bare.annotations, bare.deletion_timestamp) == (
        "",
        "Pending",
        {},
        None,
    )
    assert not pod_from_object(pod_json("p", "u", phase="Succeeded")).active
    assert not pod_from_object(pod_json("p", "u", deleting="2024-05-01T10:00:00Z")).active


def test_list_then_watch_events() -> None:
    core = FakeCore(pod_list("100", pod_json("p1", "u1"), pod_json("x", "ux", node="node-b")))
    script = Script()
    source = KubernetesPodSource(NODE, core, script.watch)
    seen = recorder(source)
    assert source.relist() == "100"
    assert core.calls == [{"field_selector": "spec.nodeName=node-a"}]
    assert source.has_synced()
    assert [p.name for p in source.pods()] == ["p1"]  # another node's pod is never ours
    script.streams = [
        [
            event("ADDED", pod_json("p3", "u3", rv="101", phase="Pending")),
            event("MODIFIED", pod_json("p3", "u3", rv="102")),
            {
                "type": "BOOKMARK",
                "object": {},
                "raw_object": {"metadata": {"resourceVersion": "105"}},
            },
            event("DELETED", pod_json("p1", "u1", rv="106")),
            # the client with deserialize=False yields plain JSON in `object` and no raw_object
            {"type": "MODIFIED", "object": pod_json("p3", "u3", rv="107", phase="Succeeded")},
        ]
    ]
    assert source.watch_once("100") == "107"
    (call,) = script.calls
    assert call["field_selector"] == "spec.nodeName=node-a"
    assert call["resource_version"] == "100"
    assert call["allow_watch_bookmarks"] is True
    assert 300 <= call["timeout_seconds"] <= 360
    assert seen == [
        ("ADDED", "p1", "Running"),
        ("ADDED", "p3", "Pending"),
        ("MODIFIED", "p3", "Running"),
        ("DELETED", "p1", "Running"),
        ("MODIFIED", "p3", "Succeeded"),
    ]
    assert [p.name for p in source.pods()] == ["p3"]


def test_watch_error_other_than_gone_is_an_error() -> None:
    source = KubernetesPodSource(NODE, FakeCore(pod_list("1")), Script().watch)
    status = {"kind": "Status", "code": 500, "message": "etcd is sad"}
    with pytest.raises(PodSourceError, match="pod watch error 500: etcd is sad"):
        source.apply_event({"type": "ERROR", "object": status, "raw_object": status}, "1")


def test_no_node_name_is_refused() -> None:
    with pytest.raises(PodSourceError, match="no node name"):
        KubernetesPodSource("", FakeCore(pod_list("1")), Script().watch)


# --- the loop ------------------------------------------------------------------------------------


def test_410_gone_relists_and_pods_deleted_meanwhile_are_deleted() -> None:
    core = FakeCore(
        pod_list("100", pod_json("p1", "u1"), pod_json("p2", "u2")),
        pod_list("200", pod_json("p2", "u2"), pod_json("p3", "u3", rv="150")),  # p1 went
        pod_list("300", pod_json("p2", "u2"), pod_json("p3", "u3", rv="150")),
    )
    script = Script(
        [event("ADDED", pod_json("p3", "u3", rv="101")), gone()],  # an ERROR event
        [ApiError(410)],  # what the client raises itself
    )
    source = KubernetesPodSource(NODE, core, script.watch, backoff_initial=0.01)
    seen = recorder(source)
    source.start()
    try:
        assert script.idle.wait(WAIT)
    finally:
        source.stop()
    assert source.lists == 3
    assert [c["resource_version"] for c in script.calls] == ["100", "200", "300"]
    assert seen == [
        ("ADDED", "p1", "Running"),
        ("ADDED", "p2", "Running"),
        ("ADDED", "p3", "Running"),
        ("DELETED", "p1", "Running"),
        ("MODIFIED", "p3", "Running"),  # same pod, newer resourceVersion from the list
    ]


def test_failures_back_off_and_recover(caplog: pytest.LogCaptureFixture) -> None:
    core = FakeCore(ApiError(503), ApiError(503), pod_list("7", pod_json("p1", "u1")))
    script = Script([RuntimeError("connection reset")])
    source = KubernetesPodSource(NODE, core, script.watch, backoff_initial=0.01)
    source.start()
    try:
        assert script.idle.wait(WAIT)
    finally:
        source.stop()
    assert source.lists == 2  # 503, 503, list, watch fails, list, watch idles
    assert [p.name for p in source.pods()] == ["p1"]
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 3
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in failures)


def test_real_kubernetes_watch_over_a_fake_http_response() -> None:
    """kubernetes.watch.Watch itself decodes the lines and raises ApiException(410)."""
    kwatch = pytest.importorskip("kubernetes.watch")
    server_closed = threading.Event()

    class Resp:
        status = 200

        def __init__(self, lines: list[dict[str, Any]] | None) -> None:
            self.lines = lines
            # Watch.stop() shuts this socket down to unblock a read
            self.connection = SimpleNamespace(
                sock=SimpleNamespace(shutdown=lambda how: server_closed.set())
            )

        def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
            if self.lines is None:  # a quiet watch: nothing until the connection goes
                server_closed.wait(WAIT)
                return
            for line in self.lines:
                yield (json.dumps(line) + "\n").encode()

        def close(self) -> None:
            pass

        def release_conn(self) -> None:
            pass

    watches: list[dict[str, Any]] = []
    lists = [
        pod_list("100", pod_json("p1", "u1")),
        pod_list("200", pod_json("p2", "u2", rv="101")),
    ]
    streams: list[list[dict[str, Any]] | None] = [
        [
            {"type": "ADDED", "object": pod_json("p2", "u2", rv="101")},
            {
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "code": 410,
                    "reason": "Expired",
                    "message": "too old",
                },
            },
        ],
        None,
    ]

    class Core:
        def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
            """List pods.

            :rtype: V1PodList
            """
            if kwargs.get("watch"):
                watches.append(kwargs)
                return Resp(streams.pop(0) if streams else None)
            return lists.pop(0)

    source = KubernetesPodSource(NODE, Core(), kwatch.Watch, backoff_initial=0.01)
    seen = recorder(source)
    source.start()
    try:
        for _ in range(int(WAIT / 0.01)):
            if len(watches) >= 2:
                break
            server_closed.wait(0.01)
    finally:
        source.stop()
    assert [w["resource_version"] for w in watches] == ["100", "200"]
    assert seen == [
        ("ADDED", "p1", "Running"),
        ("ADDED", "p2", "Running"),
        ("DELETED", "p1", "Running"),
    ]
    assert source.lists == 2


def test_list_of_client_models_is_translated() -> None:
    """The real client's list returns models; from_config hands in sanitize_for_serialization."""
    k8s = pytest.importorskip("kubernetes.client")
    meta = k8s.V1ObjectMeta(
        name="p",
        namespace="ns1",
        uid="u1",
        resource_version="5",
        annotations={"ns.networkservicemesh.io": "svc"},
        deletion_timestamp=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
    )
    pods = k8s.V1PodList(
        items=[
            k8s.V1Pod(
                metadata=meta,
                spec=k8s.V1PodSpec(node_name=NODE, containers=[k8s.V1Container(name="c0")]),
                status=k8s.V1PodStatus(phase="Running"),
            )
        ],
        metadata=k8s.V1ListMeta(resource_version="5"),
    )
    source = KubernetesPodSource(
        NODE, FakeCore(pods), Script().watch, to_dict=k8s.ApiClient().sanitize_for_serialization
    )
    assert source.relist() == "5"
    (pod,) = source.pods()
    assert pod == Pod(
        "ns1",
        "p",
        "u1",
        NODE,
        {"ns.networkservicemesh.io": "svc"},
        "Running",
        "2024-05-01T10:00:00+00:00",
        "5",
    )
    assert not pod.active


# --- the fake ------------------------------------------------------------------------------------


def test_fake_source_filters_like_a_field_selector_and_waits_for_sync() -> None:
    mine, theirs = Pod("ns1", "p", "u1", NODE), Pod("ns1", "q", "u2", "node-b")
    source = FakePodSource(NODE, [mine, theirs], synced=False)
    seen = recorder(source)
    source.start()
    assert not source.has_synced() and seen == []
    source.add(Pod("ns1", "r", "u3", NODE))  # the API server has it; nobody listed yet
    assert seen == []
    source.sync()
    assert source.has_synced()
    assert sorted(n for _, n, _ in seen) == ["p", "r"]
    source.delete("u1")
    source.add(theirs)
    assert seen[-1] == ("DELETED", "p", "Pending")
    assert [p.name for p in source.pods()] == ["r"]
