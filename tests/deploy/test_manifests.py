"""deploy/: the kustomization's structure, every object against the Kubernetes schemas (offline,
kubernetes-validate, one pinned version), and what the node agents and the shim need of their pods."""

from __future__ import annotations

import glob
import os

import pytest
import yaml
from kubernetes_validate.utils import validate

from tests.deploy import kustomize
from tests.deploy.manifests import (
    COMPONENTS,
    DEPLOY,
    KUBE_VERSION,
    NAMESPACE,
    command,
    container,
    env_value,
    find,
    flag,
    host_path_of,
    of_kind,
    pod_spec,
    pyproject,
    rendered,
    volume,
    workload,
)

EXAMPLES = sorted(glob.glob(os.path.join(DEPLOY, "examples", "*.yaml")))
NOT_RESOURCES = ("config", "examples")  # generator inputs and the example pod, by design unlisted


def _id(o: dict) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


# -- the kustomization ----------------------------------------------------------------------------


def _yaml_under(path: str) -> set[str]:
    return {
        os.path.normpath(p)
        for p in glob.glob(os.path.join(path, "**", "*.y*ml"), recursive=True)
        if os.path.basename(p) != "kustomization.yaml"
    }


def test_every_manifest_is_listed_and_every_listed_file_exists():
    """`kustomize build deploy` is all of deploy/: nothing listed is missing, nothing is left out
    (a directory listed, such as crds/ with a kustomization of its own, covers its files)."""
    k = kustomize.read_kustomization(DEPLOY)
    listed = set()
    for rel in k["resources"]:
        path = os.path.normpath(os.path.join(DEPLOY, rel))
        assert os.path.exists(path), f"kustomization lists {rel}, which does not exist"
        listed |= _yaml_under(path) if os.path.isdir(path) else {path}
    on_disk = {
        p
        for p in _yaml_under(DEPLOY)
        if os.path.relpath(p, DEPLOY).split(os.sep)[0] not in NOT_RESOURCES
    }
    assert sorted(on_disk - listed) == [], "manifests left out of deploy/kustomization.yaml"


def test_every_config_file_feeds_a_generator():
    k = kustomize.read_kustomization(DEPLOY)
    used = {
        os.path.normpath(os.path.join(DEPLOY, f.partition("=")[2] or f))
        for g in k["configMapGenerator"]
        for f in g["files"]
    }
    on_disk = {os.path.normpath(p) for p in glob.glob(os.path.join(DEPLOY, "config", "*"))}
    assert on_disk == used


def test_crds_are_part_of_the_kustomization():
    crd_files = glob.glob(os.path.join(DEPLOY, "crds", "*.y*ml"))
    if not crd_files:
        pytest.skip("deploy/crds/ has no CRDs yet")
    crds = {o["metadata"]["name"] for o in of_kind("CustomResourceDefinition")}
    for path in crd_files:
        for doc in kustomize.load_yaml_docs(path):
            if doc.get("kind") == "CustomResourceDefinition":
                assert doc["metadata"]["name"] in crds, f"{path} is not rendered"


def test_build_is_one_namespace_with_unique_objects():
    objs = rendered()
    assert find("Namespace", NAMESPACE)
    for o in objs:
        if o["kind"] not in kustomize.CLUSTER_SCOPED:
            assert o["metadata"]["namespace"] == NAMESPACE, _id(o)
    # every ConfigMap a pod mounts is one the generator made (the hash suffix was applied)
    made = {o["metadata"]["name"] for o in of_kind("ConfigMap")}
    for component in COMPONENTS:
        for v in pod_spec(component)["volumes"]:
            if "configMap" in v:
                assert v["configMap"]["name"] in made, f"{component}: {v['configMap']['name']}"


def test_one_image_everywhere_tagged_with_the_package_version():
    k = kustomize.read_kustomization(DEPLOY)
    (im,) = k["images"]
    version = pyproject()["project"]["version"]
    assert im["newTag"] == version
    for o in rendered():
        spec = kustomize.pod_spec(o)
        if spec is None:
            continue
        for c in kustomize.containers(spec):
            assert c["image"] == f"{im['newName']}:{version}", f"{_id(o)} {c['name']}"


# -- the schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", rendered(), ids=_id)
def test_rendered_object_is_valid_kubernetes(obj):
    validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_is_valid_kubernetes(path):
    for obj in kustomize.load_yaml_docs(path):
        validate(obj, KUBE_VERSION, strict=True)


def test_validation_catches_mistakes():
    """The check above is worth something: a misspelt field and a wrong type are refused."""
    ds = find("DaemonSet", "nsmgr")
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(Exception, match="volumeMount"):
        validate(ds, KUBE_VERSION, strict=True)
    dep = find("Deployment", "torshim")
    dep["spec"]["replicas"] = "2"
    with pytest.raises(Exception, match="not of type"):
        validate(dep, KUBE_VERSION, strict=True)


# -- node agents ----------------------------------------------------------------------------------

DEVICE_PLUGIN_HOST_PATHS = {
    "--kubelet-dir": "/var/lib/kubelet/device-plugins",
    "--plugins-registry-dir": "/var/lib/kubelet/plugins_registry",
    "--pod-resources-socket": "/var/lib/kubelet/pod-resources/kubelet.sock",
    "--device-info-dir": "/var/run/k8s.cni.cncf.io/devinfo/dp",
    "--sysfs-root": "/sys",
    "--dev-root": "/dev",
}


@pytest.mark.parametrize("component", ["sriov-device-plugin", "nsmgr"])
def test_node_agents_run_on_labelled_nodes_in_the_host_network(component):
    spec = pod_spec(component)
    assert spec["hostNetwork"] is True  # netlink and uevents are per network namespace
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"sriov-nsm/enabled": "true"}
    assert container(component)["securityContext"]["runAsUser"] == 0


def test_device_plugin_paths_are_the_hosts():
    args = command("sriov-device-plugin")
    for name, host in DEVICE_PLUGIN_HOST_PATHS.items():
        value = flag(args, name)
        assert value is not None, f"sriov-device-plugin: {name} not given"
        assert host_path_of("sriov-device-plugin", value) == host, name
    sc = container("sriov-device-plugin")["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    for ro in ("/host/sys", "/host/dev", "/var/lib/kubelet/pod-resources"):
        (m,) = [m for m in container("sriov-device-plugin")["volumeMounts"] if m["mountPath"] == ro]
        assert m.get("readOnly") is True, ro
    assert pod_spec("sriov-device-plugin")["automountServiceAccountToken"] is False


def test_nsmgr_mounts_and_node_name():
    assert container("nsmgr")["securityContext"]["privileged"] is True
    node = env_value("nsmgr", "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"]
    assert node == "spec.nodeName"
    wanted = {
        "/var/lib/kubelet/pod-resources": "/var/lib/kubelet/pod-resources",
        "/run/containerd/containerd.sock": "/run/containerd/containerd.sock",
        "/run/netns": "/var/run/netns",
        "/host/proc": "/proc",
        "/var/lib/networkservicemesh": "/var/lib/networkservicemesh",
        "/var/lib/sriov-nsm/nsmgr": "/var/lib/sriov-nsm/nsmgr",
    }
    for path, host in wanted.items():
        assert host_path_of("nsmgr", path) == host, path
    (netns,) = [m for m in container("nsmgr")["volumeMounts"] if m["name"] == "netns"]
    assert netns["mountPropagation"] == "HostToContainer"  # namespaces made after nsmgr started
    assert volume("nsmgr", "cri-socket")["hostPath"]["type"] == "Socket"


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_probes_hit_the_metrics_port(component):
    c = container(component)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "metrics" in ports
    assert c["resources"]["limits"]["memory"]


# -- the shim and the registry --------------------------------------------------------------------


def test_torshim_two_replicas_one_leader_lease():
    dep = workload("torshim")
    assert dep["spec"]["replicas"] == 2
    args = command("torshim")
    lease = flag(args, "--lease-name")
    assert "--leader-elect" in args and lease
    role = find("Role", "torshim-leader-election")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert [r["resourceNames"] for r in named] == [[lease]]
    for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        assert env_value("torshim", var)["valueFrom"]["fieldRef"]["fieldPath"] == field
    # the store: one volume both replicas can mount, whichever leads
    claim = volume("torshim", "store")["persistentVolumeClaim"]["claimName"]
    assert find("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    pdb = find("PodDisruptionBudget", "torshim")
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]


@pytest.mark.parametrize("component", ["torshim", "nsm-registry"])
def test_unprivileged_components(component):
    spec = pod_spec(component)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
    sc = container(component)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not spec.get("hostNetwork")
    assert not any("hostPath" in v for v in spec["volumes"])


def test_registry_service_reaches_the_registry():
    svc = find("Service", "nsm-registry")
    dep = workload("nsm-registry")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "nsregistry"  # SRV _nsregistry._tcp.<service>
    assert port["targetPort"] in {p["name"] for p in container("nsm-registry")["ports"]}


def test_selectors_match_templates():
    for kind, _ in COMPONENTS.values():
        for o in of_kind(kind):
            labels = o["spec"]["template"]["metadata"]["labels"]
            for k, v in o["spec"]["selector"]["matchLabels"].items():
                assert labels[k] == v, _id(o)


# -- the example pod ------------------------------------------------------------------------------


def test_example_pod_is_the_seeds():
    (pod,) = kustomize.load_yaml_docs(os.path.join(DEPLOY, "examples", "cnf-pod.yaml"))
    assert pod["metadata"]["annotations"] == {"ns.networkservicemesh.io": "myns.example.com"}
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"] == {"example.com/100g": 1}


def test_yaml_files_parse_without_duplicate_keys():
    """PyYAML keeps the last of two equal keys; kubectl refuses them. Catch them here."""

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
        dup = {k for k in keys if keys.count(k) > 1}
        assert not dup, f"line {node.start_mark.line + 1}: duplicate keys {dup}"
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    for path in glob.glob(os.path.join(DEPLOY, "**", "*.y*ml"), recursive=True):
        with open(path, encoding="utf-8") as f:
            list(yaml.load_all(f, Loader=Strict))  # a SafeLoader
