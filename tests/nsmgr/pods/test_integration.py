"""start_pod_integration and PodsConfig: the piece `nsmgr serve` will call."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nsmgr.pods import FakePodSource, Pod, PodsConfig, PodSourceError, start_pod_integration
from nsmgr.pods.annotations import SEED_KEY
from tests.nsmgr.pods.conftest import netns_file
from tests.nsmgr.pods.standins import CriStandIn, PodResourcesStandIn, RecordingAgent

NODE = "node-a"
A = "0000:3b:02.0"


def config(kubelet: PodResourcesStandIn, runtime: CriStandIn, proc_root: Path) -> PodsConfig:
    return PodsConfig(
        node_name=NODE,
        podresources_socket=kubelet.socket_path,
        cri_socket="unix://" + runtime.socket_path,
        proc_root=str(proc_root),
        retry_initial_seconds=0.02,
        retry_max_seconds=0.2,
        resource_prefixes=["example.com"],
    )


def test_pod_comes_and_goes(
    kubelet: PodResourcesStandIn, runtime: CriStandIn, proc_root: Path
) -> None:
    agent = RecordingAgent()
    source = FakePodSource(NODE)
    handle = start_pod_integration(agent, config(kubelet, runtime, proc_root), source=source)
    try:
        pod = Pod("ns1", "p", "uid-p", NODE, {SEED_KEY: "svc.example.com"}, "Pending")
        source.add(pod)
        kubelet.admit("ns1", "p", {"example.com/100g": [A], "other.io/x": ["0000:3b:02.1"]})
        ns = netns_file(proc_root, "cni-p")
        runtime.run_pod(pod.uid, pod.name, pod.namespace, netns=str(ns))
        agent.wait_for(lambda a: "uid-p-0" in a.conns)
        (req,) = agent.requests
        assert (req.pci_address, req.netns, req.ifname) == (A, str(ns), "nsm0")
        source.delete(pod)
        agent.wait_for(lambda a: a.conns == {})
    finally:
        handle.stop()


def test_config_defaults_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "worker-3")
    cfg = PodsConfig()
    assert cfg.node_name == "worker-3"
    assert cfg.podresources_socket == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert cfg.cri_socket == "unix:///run/containerd/containerd.sock"
    assert (cfg.proc_root, cfg.resync_seconds, cfg.resource_prefixes, cfg.kubeconfig) == (
        "/proc",
        60.0,
        [],
        None,
    )
    monkeypatch.delenv("NODE_NAME")
    with pytest.raises(ValidationError, match=r"set pods\.node_name or the NODE_NAME environment"):
        PodsConfig()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PodsConfig(node_name="n", nodeName="n")
    with pytest.raises(ValidationError, match="greater than 0"):
        PodsConfig(node_name="n", resync_seconds=0)
    with pytest.raises(ValidationError, match="is not a domain"):
        PodsConfig(node_name="n", resource_prefixes=["/x"])


def test_no_cluster_access_is_one_line(
    kubelet: PodResourcesStandIn,
    runtime: CriStandIn,
    proc_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    pytest.importorskip("kubernetes")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = config(kubelet, runtime, proc_root)
    with pytest.raises(PodSourceError, match="the in-cluster service account"):
        start_pod_integration(RecordingAgent(), cfg)
    cfg = cfg.model_copy(update={"kubeconfig": str(tmp_path / "absent.yaml")})
    with pytest.raises(PodSourceError, match=r"absent\.yaml"):
        start_pod_integration(RecordingAgent(), cfg)
