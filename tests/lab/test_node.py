"""The lab node (python -m lab.node): its API server with the real `kubernetes` client and nsmgr's
KubernetesPodSource, and the whole node with the real device plugin over a fake sysfs.

Real processes, sockets and network namespaces; every netns (prefix `t<random>-`), process and
folder a test makes is removed in its `finally`, also when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import grpc
import pytest

from lab import apiclient
from lab.apiserver import ApiServer, PodStore
from lab.node import device_requests
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec
from nsmgr.pods.kubesource import KubernetesPodSource
from nsmgr.pods.podsource import PodEvent
from sriov_nsm_wire.cri.runtime.v1 import api_pb2 as cri_pb
from sriov_nsm_wire.cri.runtime.v1 import api_pb2_grpc as cri_grpc
from sriov_nsm_wire.podresources.v1 import api_pb2 as pr_pb
from sriov_nsm_wire.podresources.v1 import api_pb2_grpc as pr_grpc
from tests.conftest import needs_root
from tests.deviceplugin.daemon import wait_until
from tests.lab.conftest import REPO

WAIT = 20.0  # upper bound of every wait; a passing run never gets near it
RES = "example.com/100g"
T = TypeVar("T")


def pod(name: str, node: str = "n1", namespace: str = "ns1", **limits: Any) -> dict[str, Any]:
    resources = {"limits": {k.replace("__", "/"): v for k, v in limits.items()}}
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox", "resources": resources}],
        },
    }


class Recorder:
    """A PodSource subscriber keeping (type, name, phase, deleting) per event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, bool]] = []
        self._cond = threading.Condition()

    def __call__(self, e: PodEvent) -> None:
        with self._cond:
            self.events.append(
                (e.type, e.pod.name, e.pod.phase, e.pod.deletion_timestamp is not None)
            )
            self._cond.notify_all()

    def wait(self, event: tuple[str, str, str, bool]) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: event in self.events, WAIT):
                raise AssertionError(f"no {event} among {self.events}")


@contextlib.contextmanager
def pod_source(
    kubeconfig: str, node: str, **kw: Any
) -> Iterator[tuple[KubernetesPodSource, Recorder]]:
    src = KubernetesPodSource.from_config(node, kubeconfig, **kw)
    rec = Recorder()
    src.subscribe(rec)
    src.start()
    try:
        assert src.wait_synced(WAIT)
        yield src, rec
    finally:
        src.stop()


# -- the API server, in this process ------------------------------------------------------------


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[ApiServer, str]]:
    server = ApiServer(bookmark_interval=0.5).start()
    try:
        yield server, server.write_kubeconfig(str(tmp_path / "kubeconfig"))
    finally:
        server.stop()


def test_kubernetes_client_and_pod_source_see_the_lifecycle(api: tuple[ApiServer, str]) -> None:
    server, kubeconfig = api
    # a short watch: the source re-watches from its last version, missing nothing
    with pod_source(kubeconfig, "n1", watch_timeout=1) as (src, rec):
        created = apiclient.create_pod(server.url, pod("a", **{"example.com__100g": 1}))
        apiclient.create_pod(server.url, pod("elsewhere", node="n2"))
        meta = created["metadata"]
        assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
        assert created["status"]["phase"] == "Pending"
        rec.wait(("ADDED", "a", "Pending", False))
        time.sleep(1.5)  # across a watch's end
        server.store.update_status("ns1", "a", {"phase": "Running"})
        rec.wait(("MODIFIED", "a", "Running", False))
        gone = apiclient.delete_pod(server.url, "ns1", "a")
        assert gone["metadata"]["deletionTimestamp"]  # graceful: still there
        rec.wait(("MODIFIED", "a", "Running", True))
        assert apiclient.get_pod(server.url, "ns1", "a") is not None
        assert server.store.finalize("ns1", "a", meta["uid"]) is not None  # the kubelet is done
        rec.wait(("DELETED", "a", "Running", True))
        assert apiclient.get_pod(server.url, "ns1", "a") is None
        assert {e[1] for e in rec.events} == {"a"}  # the field selector kept n2's pod out
        assert src.lists == 1  # no relist: every watch resumed


def test_api_semantics(api: tuple[ApiServer, str]) -> None:
    from kubernetes import client, config, watch

    server, kubeconfig = api
    v1 = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    v1.create_namespaced_pod("ns1", pod("a"))
    with pytest.raises(client.ApiException) as e:
        v1.create_namespaced_pod("ns1", pod("a"))
    assert e.value.status == 409
    with pytest.raises(apiclient.ApiError) as e2:
        apiclient.create_pod(server.url, {"metadata": {"name": "x"}, "spec": {"containers": []}})
    assert e2.value.code == 422
    with pytest.raises(client.ApiException) as e:
        v1.list_pod_for_all_namespaces(field_selector="spec.nope=1")
    assert e.value.status == 400
    # unscheduled, finished, or grace 0: deleted at once
    v1.create_namespaced_pod("ns1", pod("unscheduled", node=""))
    v1.delete_namespaced_pod("unscheduled", "ns1")
    v1.create_namespaced_pod("ns1", pod("done"))
    v1.patch_namespaced_pod_status("done", "ns1", {"status": {"phase": "Succeeded"}})
    v1.delete_namespaced_pod("done", "ns1")
    v1.create_namespaced_pod("ns1", pod("forced"))
    v1.delete_namespaced_pod("forced", "ns1", grace_period_seconds=0)
    assert [p["metadata"]["name"] for p in apiclient.list_pods(server.url)] == ["a"]
    assert apiclient.list_pods(server.url, node="n2") == []
    # a watch from "" starts with the current pods; bookmarks carry the version; it ends in time
    started = time.monotonic()
    events = list(
        watch.Watch().stream(
            v1.list_pod_for_all_namespaces, allow_watch_bookmarks=True, timeout_seconds=1
        )
    )
    assert 0.9 < time.monotonic() - started < 5
    assert events[0]["type"] == "ADDED" and events[0]["object"].metadata.name == "a"
    assert any(e["type"] == "BOOKMARK" for e in events)


def test_watch_from_a_compacted_version_is_gone(tmp_path) -> None:
    from kubernetes import client, config, watch

    with ApiServer(PodStore(history=2)) as server:
        kubeconfig = server.write_kubeconfig(str(tmp_path / "kubeconfig"))
        v1 = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        for name in "abcd":
            v1.create_namespaced_pod("ns1", pod(name))
        with pytest.raises(client.ApiException) as e:
            list(
                watch.Watch().stream(
                    v1.list_pod_for_all_namespaces, resource_version="1", timeout_seconds=1
                )
            )
        assert e.value.status == 410
        replayed = watch.Watch().stream(
            v1.list_pod_for_all_namespaces, resource_version="2", timeout_seconds=1
        )
        assert [(e["type"], e["object"].metadata.name) for e in replayed] == [
            ("ADDED", "c"),
            ("ADDED", "d"),
        ]


def test_device_requests() -> None:
    p = pod("a", **{"example.com__100g": "2", "cpu": "1", "hugepages-1Gi": "1Gi"})
    p["spec"]["containers"].append(
        {"name": "d", "resources": {"requests": {"other.org/10g": 1, "k8s.io/x": 0}}}
    )
    assert device_requests(p) == [("c", "example.com/100g", 2), ("d", "other.org/10g", 1)]


# -- the node process with the real device plugin -----------------------------------------------


class Lab:
    """A node process, a device plugin process, a fake sysfs and a netns prefix, all removed by
    close() whatever happened."""

    def __init__(self) -> None:
        # short: unix socket paths must stay under 108 bytes
        self.root = tempfile.mkdtemp(prefix="lnd-", dir="/tmp")
        self.state_dir = os.path.join(self.root, "sd")
        os.mkdir(self.state_dir)
        self.prefix = f"t{uuid.uuid4().hex[:6]}-"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.info: dict[str, Any] = {}
        fs = FakeSysfs(os.path.join(self.root, "sys"))
        built = fs.add_pf(
            PFSpec(
                model="e810",
                pci_address="0000:3b:00.0",
                ifname="ens1f0",
                vfs=[VFSpec(), VFSpec()],
            )
        )
        self.vfs = built.vf_addresses
        self.config = os.path.join(self.root, "dp.yaml")
        with open(self.config, "w") as f:
            f.write(
                "nsm:\n  pfs:\n"
                "    - {pf: ens1f0, capabilities: [100g], serviceDomains: [example.com]}\n"
            )

    def log(self, name: str) -> str:
        return os.path.join(self.root, f"{name}.log")

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log(name), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        self.procs.append(proc)
        return proc

    def start_node(self, grace: float = 2.0) -> subprocess.Popen[bytes]:
        proc = self.spawn(
            "node",
            "lab.node",
            "--state-dir",
            self.state_dir,
            "--node",
            "n1",
            "--netns-prefix",
            self.prefix,
            "--grace",
            str(grace),
        )
        self.info = apiclient.wait_node_ready(self.state_dir, proc, WAIT)
        return proc

    def start_device_plugin(self) -> subprocess.Popen[bytes]:
        kubelet = os.path.join(self.state_dir, "kubelet")
        return self.spawn(
            "device-plugin",
            "deviceplugin.cli",
            "--config-file",
            self.config,
            "--sysfs-root",
            os.path.join(self.root, "sys"),
            "--kubelet-dir",
            os.path.join(kubelet, "device-plugins"),
            "--plugins-registry-dir",
            os.path.join(kubelet, "plugins_registry"),
            "--pod-resources-socket",
            os.path.join(kubelet, "pod-resources", "kubelet.sock"),
            "--device-info-dir",
            os.path.join(self.root, "devinfo"),
            "--metrics-port",
            "0",
            "--no-events",
        )

    @property
    def api(self) -> str:
        return str(self.info["api"])

    def netns(self, namespace: str, name: str) -> str:
        return f"{self.prefix}{namespace}.{name}"

    def our_netns(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(n for n in os.listdir("/run/netns") if n.startswith(self.prefix))
        return []

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        for ns in self.our_netns():
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> str:
        out = []
        for name in ("node", "device-plugin"):
            with contextlib.suppress(OSError), open(self.log(name)) as f:
                out.append(f"--- {name}\n{f.read()[-4000:]}")
        return "\n".join(out)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    except BaseException:
        print(lab.logs())
        raise
    finally:
        lab.close()


def pod_resources(socket_path: str) -> dict[str, dict[str, list[str]]]:
    """pod-resources List as {ns/name: {resource: [device ids]}}."""
    with grpc.insecure_channel("unix:" + socket_path) as ch:
        resp = pr_grpc.PodResourcesListerStub(ch).List(pr_pb.ListPodResourcesRequest(), timeout=5)
    out: dict[str, dict[str, list[str]]] = {}
    for p in resp.pod_resources:
        held = out.setdefault(f"{p.namespace}/{p.name}", {})
        for c in p.containers:
            for d in c.devices:
                held.setdefault(d.resource_name, []).extend(d.device_ids)
    return out


def allocatable(socket_path: str) -> list[str]:
    with grpc.insecure_channel("unix:" + socket_path) as ch:
        resp = pr_grpc.PodResourcesListerStub(ch).GetAllocatableResources(
            pr_pb.AllocatableResourcesRequest(), timeout=5
        )
    return sorted(i for d in resp.devices if d.resource_name == RES for i in d.device_ids)


def sandbox_netns(socket_path: str, uid: str) -> str | None:
    """The netns path the CRI reports for the pod's ready sandbox (None: no sandbox)."""
    with grpc.insecure_channel("unix:" + socket_path) as ch:
        stub = cri_grpc.RuntimeServiceStub(ch)
        items = stub.ListPodSandbox(
            cri_pb.ListPodSandboxRequest(
                filter=cri_pb.PodSandboxFilter(label_selector={"io.kubernetes.pod.uid": uid})
            ),
            timeout=5,
        ).items
        if not items:
            return None
        status = stub.PodSandboxStatus(
            cri_pb.PodSandboxStatusRequest(pod_sandbox_id=items[0].id, verbose=True), timeout=5
        )
    info = json.loads(status.info["info"])
    spaces = info["runtimeSpec"]["linux"]["namespaces"]
    return next(n.get("path") for n in spaces if n["type"] == "network")


def phase(api: str, namespace: str, name: str) -> str | None:
    p = apiclient.get_pod(api, namespace, name)
    return None if p is None else p["status"]["phase"]


@needs_root
def test_node_admits_and_tears_down_pods_with_the_real_device_plugin(lab: Lab) -> None:
    node = lab.start_node(grace=2.0)
    info = lab.info
    assert info["pid"] == node.pid and info["node"] == "n1"
    for key in ("kubelet_socket", "pod_resources_socket", "cri_socket"):
        assert os.path.exists(info[key]), key
    assert os.path.isdir(info["plugins_registry_dir"])
    lab.start_device_plugin()
    podres = info["pod_resources_socket"]
    wait_until(lambda: allocatable(podres) == sorted(lab.vfs), "the device plugin's pool")

    def logged(text: str) -> bool:
        with open(lab.log("device-plugin")) as f:
            return text in f.read()

    # both ways in are accepted, as by current kubelet: Register and the plugin watcher
    wait_until(lambda: logged(f"registered {RES} with kubelet"), "Register")
    wait_until(lambda: logged(f"kubelet registered {RES} through the plugin watcher"), "watcher")

    with pod_source(info["kubeconfig"], "n1") as (_, rec):
        # one device: Running, with its netns, its sandbox and its device
        uid = apiclient.create_pod(lab.api, pod("a", **{"example.com__100g": 1}))["metadata"]["uid"]
        wait_until(lambda: phase(lab.api, "ns1", "a") == "Running", "pod a Running")
        rec.wait(("MODIFIED", "a", "Running", False))
        ns_a = lab.netns("ns1", "a")
        assert lab.our_netns() == [ns_a]
        assert sandbox_netns(info["cri_socket"], uid) == f"/run/netns/{ns_a}"
        held = pod_resources(podres)
        assert list(held) == ["ns1/a"] and len(held["ns1/a"][RES]) == 1
        assert held["ns1/a"][RES][0] in lab.vfs

        # no extended resources: Running too; more devices than the node has: Failed, no netns
        apiclient.create_pod(lab.api, pod("plain"))
        wait_until(lambda: phase(lab.api, "ns1", "plain") == "Running", "pod plain Running")
        apiclient.create_pod(lab.api, pod("greedy", **{"example.com__100g": 5}))
        wait_until(lambda: phase(lab.api, "ns1", "greedy") == "Failed", "pod greedy Failed")
        greedy = apiclient.get_pod(lab.api, "ns1", "greedy")
        assert greedy is not None
        assert greedy["status"]["reason"] == f"OutOf{RES}"
        assert "requested: 5" in greedy["status"]["message"]
        assert lab.netns("ns1", "greedy") not in lab.our_netns()
        apiclient.create_pod(lab.api, pod("typo", **{"example.com__1000g": 1}))
        wait_until(lambda: phase(lab.api, "ns1", "typo") == "Failed", "pod typo Failed")

        # deleting: the netns, sandbox and device go, then the pod (DELETED)
        apiclient.delete_pod(lab.api, "ns1", "a")
        rec.wait(("MODIFIED", "a", "Running", True))
        rec.wait(("DELETED", "a", "Running", True))
        assert ns_a not in lab.our_netns()
        assert sandbox_netns(info["cri_socket"], uid) is None
        assert "ns1/a" not in pod_resources(podres)
        for name in ("plain", "greedy", "typo"):
            apiclient.delete_pod(lab.api, "ns1", name)
        wait_until(lambda: not apiclient.list_pods(lab.api), "every pod gone")
        assert lab.our_netns() == []
        assert pod_resources(podres) == {}

    # a netns that still holds a link: the pod waits for it to go (nsmgr moving the VF back)
    apiclient.create_pod(lab.api, pod("b", **{"example.com__100g": 2}))
    wait_until(lambda: phase(lab.api, "ns1", "b") == "Running", "pod b Running")
    ns_b = lab.netns("ns1", "b")
    assert sorted(pod_resources(podres)["ns1/b"][RES]) == sorted(lab.vfs)
    subprocess.run(
        ["ip", "-n", ns_b, "link", "add", "v0", "type", "veth", "peer", "v1"], check=True
    )
    apiclient.delete_pod(lab.api, "ns1", "b")
    time.sleep(1.0)
    assert apiclient.get_pod(lab.api, "ns1", "b") is not None  # waiting: links are left
    subprocess.run(["ip", "-n", ns_b, "link", "del", "v0"], check=True)
    wait_until(lambda: apiclient.get_pod(lab.api, "ns1", "b") is None, "pod b gone")
    assert lab.our_netns() == []

    # ... for --grace at most; then the pod goes and the netns, with its links, stays
    apiclient.create_pod(lab.api, pod("c", **{"example.com__100g": 1}))
    wait_until(lambda: phase(lab.api, "ns1", "c") == "Running", "pod c Running")
    ns_c = lab.netns("ns1", "c")
    subprocess.run(
        ["ip", "-n", ns_c, "link", "add", "v0", "type", "veth", "peer", "v1"], check=True
    )
    started = time.monotonic()
    apiclient.delete_pod(lab.api, "ns1", "c")
    wait_until(lambda: apiclient.get_pod(lab.api, "ns1", "c") is None, "pod c gone")
    assert time.monotonic() - started >= 1.5
    assert lab.our_netns() == [ns_c]
    assert pod_resources(podres) == {}

    # SIGTERM: exit 0, node.json gone, pod netns left for the lab's teardown
    node.send_signal(signal.SIGTERM)
    assert node.wait(10) == 0
    assert not os.path.exists(os.path.join(lab.state_dir, "node.json"))
    assert lab.our_netns() == [ns_c]
    with open(lab.log("node")) as f:
        assert f"netns {ns_c} still holds" in f.read()


def test_wait_node_ready_reports_a_node_that_cannot_start(lab: Lab) -> None:
    too_long = os.path.join(lab.root, "x" * 80)
    os.mkdir(too_long)
    proc = lab.spawn("node", "lab.node", "--state-dir", too_long, "--node", "n1",
                     "--netns-prefix", lab.prefix)  # fmt: skip
    with pytest.raises(apiclient.NodeError, match="exited"):
        apiclient.wait_node_ready(too_long, proc, WAIT)
    assert proc.wait(10) == 2
