"""RBAC grants each component exactly what its code calls: every call the code makes is granted,
no rule grants a verb, resource or API group the code never uses, nothing is cluster-wide that the
code does namespaced, and a component that never calls the API has no token.

The calls are read from the code (tests/deploy/kubecalls.py); the registry's custom resources come
from its declared GROUP and KINDS (nsmgr/registry/kube.py), checked against deploy/crds/ and, by
driving its CRD backend against a recording fake of the client, against what it really sends."""

from __future__ import annotations

import copy
import functools
import glob
import os
from typing import Any

import pytest

from tests.deploy import kubecalls, kustomize
from tests.deploy.manifests import COMPONENTS, DEPLOY, NAMESPACE, ROOT, of_kind, pod_spec, rendered

Key = tuple[str, str, str, bool]  # (verb, API group, resource, namespaced)


def _registry_resources() -> tuple[str, set[str]]:
    from nsmgr.registry import kube

    return kube.GROUP, set(kube.KINDS)


@functools.cache
def _code(component: str) -> kubecalls.Scan:
    p = lambda *parts: os.path.join(ROOT, *parts)  # noqa: E731
    if component == "sriov-device-plugin":
        return kubecalls.scan([p("deviceplugin"), p("nicinventory")], root=ROOT)
    if component == "nsmgr":
        return kubecalls.scan(
            [p("nsmgr"), p("nicinventory")], exclude=[p("nsmgr", "registry")], root=ROOT
        )
    if component == "nsm-registry":
        return kubecalls.scan([p("nsmgr", "registry")], custom=_registry_resources(), root=ROOT)
    if component == "torshim":
        return kubecalls.scan([p("torshim")], root=ROOT)
    raise KeyError(component)


def _needed(component: str) -> dict[Key, str]:
    scan = _code(component)
    assert scan.unresolved == [], f"{component}: API access the scanner cannot read"
    return {k: c.where for k, c in scan.calls.items()}


def _service_account(component: str) -> str:
    return pod_spec(component)["serviceAccountName"]


def _grants(sa: str, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (verb, group, resource) a ServiceAccount of our namespace is granted, with where."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs}
    out = []
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == NAMESPACE
            for s in b["subjects"]
        ):
            continue
        ref = b["roleRef"]
        role_ns = b["metadata"]["namespace"] if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], role_ns, ref["name"])]
        cluster_wide = b["kind"] == "ClusterRoleBinding"
        for i, rule in enumerate(role["rules"]):
            assert "nonResourceURLs" not in rule, f"{ref['name']}: non-resource URLs"
            for field in ("verbs", "apiGroups", "resources"):
                assert "*" not in rule[field], f"{ref['name']} rules[{i}]: a wildcard in {field}"
            for verb in rule["verbs"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        out.append(
                            {
                                "key": (verb, group, resource, not cluster_wide),
                                "names": rule.get("resourceNames"),
                                "where": f"{b['kind']} {b['metadata']['name']} -> "
                                f"{ref['kind']} {ref['name']} rules[{i}]",
                            }
                        )
    return out


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_every_call_is_granted(component):
    needed = _needed(component)
    grants = _grants(_service_account(component), rendered())
    for (verb, group, resource, namespaced), where in needed.items():
        # a namespaced call is granted by a Role here or by a cluster-wide grant; a cluster-wide
        # call only by a cluster-wide grant
        ok = any(
            g["key"][:3] == (verb, group, resource) and (namespaced or not g["key"][3])
            for g in grants
        )
        assert ok, f"{component}: {verb} {group or 'core'}/{resource} ({where}) is not granted"


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_nothing_is_granted_beyond_the_calls(component):
    needed = _needed(component)
    for g in _grants(_service_account(component), rendered()):
        verb, group, resource, namespaced = g["key"]
        if namespaced:
            used = (verb, group, resource, True) in needed
        else:  # cluster-wide only where the code asks across namespaces
            used = (verb, group, resource, False) in needed
        assert used, f"{component}: {g['where']} grants {verb} {group or 'core'}/{resource}" + (
            "" if namespaced else " cluster-wide"
        )


@pytest.mark.parametrize("component", list(COMPONENTS))
def test_no_token_without_calls(component):
    sa_name = _service_account(component)
    (sa,) = [o for o in of_kind("ServiceAccount") if o["metadata"]["name"] == sa_name]
    if _needed(component):
        assert sa.get("automountServiceAccountToken") is not False
        assert pod_spec(component).get("automountServiceAccountToken") is not False
    else:
        assert pod_spec(component).get("automountServiceAccountToken") is False
        assert sa.get("automountServiceAccountToken") is False
        assert not _grants(sa_name, rendered())


def test_each_component_has_its_own_service_account():
    names = [_service_account(c) for c in COMPONENTS]
    assert len(set(names)) == len(names)
    assert {o["metadata"]["name"] for o in of_kind("ServiceAccount")} == set(names)


def test_every_binding_names_an_existing_role_and_account():
    objs = rendered()
    have = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}
    for b in [o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]:
        ref = b["roleRef"]
        ns = b["metadata"]["namespace"] if ref["kind"] == "Role" else None
        assert (ref["kind"], ns, ref["name"]) in have, b["metadata"]["name"]
        for s in b["subjects"]:
            assert ("ServiceAccount", s["namespace"], s["name"]) in have
    roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole")]
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in objs if "roleRef" in b}
    assert {(r["kind"], r["metadata"]["name"]) for r in roles} == bound  # no unbound roles


def test_pod_watch_is_the_nodes_own():
    """nsmgr lists across namespaces, but only its node's pods: RBAC cannot narrow by field, so
    the code must (kubesource.py selects spec.nodeName=<node> on every list and watch)."""
    from nsmgr.pods.kubesource import KubernetesPodSource

    calls = []

    class Core:
        def list_pod_for_all_namespaces(self, **kw):
            calls.append(kw)
            return {"metadata": {"resourceVersion": "1"}, "items": []}

    src = KubernetesPodSource("node-a", Core(), lambda: None)
    src.relist()
    assert calls == [{"field_selector": "spec.nodeName=node-a"}]


# -- the registry's custom resources --------------------------------------------------------------


def test_registry_resources_are_the_crds():
    group, plurals = _registry_resources()
    crds = [
        d
        for path in glob.glob(os.path.join(DEPLOY, "crds", "*.y*ml"))
        for d in kustomize.load_yaml_docs(path)
        if d.get("kind") == "CustomResourceDefinition"
    ]
    if not crds:
        pytest.skip("deploy/crds/ has no CRDs yet")
    ours = {(c["spec"]["group"], c["spec"]["names"]["plural"]) for c in crds}
    assert {(group, p) for p in plurals} <= ours
    for c in crds:
        if c["spec"]["group"] == group:
            assert c["spec"]["scope"] == "Namespaced"  # the Role is namespaced


class RecordingCustomObjects:
    """kubernetes' CustomObjectsApi as the registry calls it, in memory, recording each request."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: set[tuple[str, str, str, str]] = set()  # (verb, group, namespace, plural)
        self.version = 0
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}

    def _rec(self, verb, group, namespace, plural):
        self.calls.add((verb, group, namespace, plural))

    @staticmethod
    def _error(status):
        e = Exception(f"HTTP {status}")
        e.status = status
        return e

    def list_namespaced_custom_object(self, group, version, namespace, plural, **kw):
        self._rec("list", group, namespace, plural)
        return {"items": [o for (p, _), o in self.objects.items() if p == plural]}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._rec("get", group, namespace, plural)
        if (plural, name) not in self.objects:
            raise self._error(404)
        return self.objects[(plural, name)]

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        self._rec("create", group, namespace, plural)
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(plural, body["metadata"]["name"])] = body
        return body

    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body, **kw):
        self._rec("update", group, namespace, plural)
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(plural, name)] = body
        return body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._rec("delete", group, namespace, plural)
        if self.objects.pop((plural, name), None) is None:
            raise self._error(404)
        return {}


@pytest.fixture
def driven_registry() -> RecordingCustomObjects:
    """The registry's CRD backend driven through a registration's life against the recorder."""
    from nsmgr.registry.kube import CrdBackend, KubeAdapter
    from nsmgr.registry.model import Endpoint, EndpointQuery, Service, ServiceQuery

    api = RecordingCustomObjects()
    backend = CrdBackend(KubeAdapter(NAMESPACE, api=api))
    backend.put_service(Service("myns.example.com", "ETHERNET"))
    url = "tcp://10.244.1.7:5003"
    nse = ("myns.example.com",)
    backend.put_endpoint(Endpoint("torshim", nse, {"myns.example.com": {"a": "b"}}, url, 100.0), 1)
    backend.put_endpoint(Endpoint("torshim", nse, {}, url, 200.0), 2.0)
    backend.put_endpoint(Endpoint("short-lived", nse, {}, url, 10.0), 2.0)
    backend.find_services(ServiceQuery())
    backend.find_services(ServiceQuery(name="myns.example.com"))
    backend.find_endpoints(EndpointQuery(network_service_names=nse), 3.0)
    backend.next_expiry()
    api.stored = {k: copy.deepcopy(v) for k, v in api.objects.items()}  # before the removals
    backend.expire(150.0)
    backend.delete_service("myns.example.com")
    backend.delete_endpoint("nothing")
    assert {v for v, *_ in api.calls} == {"list", "get", "create", "update", "delete"}
    return api


def test_registry_backend_sends_only_granted_requests(driven_registry, tmp_path):
    """Every request the registry's CRD backend sends is granted, in its Role's namespace."""
    from nsmgr.registry.config import load_config
    from tests.deploy.manifests import config_map_data

    path = tmp_path / "config.yaml"
    path.write_text(config_map_data("nsm-registry", "/etc/nsm-registry/config.yaml"))
    namespace = load_config(str(path)).store.kubernetes.namespace
    grants = {g["key"] for g in _grants(_service_account("nsm-registry"), rendered())}
    for verb, group, ns, plural in sorted(driven_registry.calls):
        assert ns == namespace
        assert (verb, group, plural, True) in grants, f"{verb} {group}/{plural} not granted"


def test_registry_objects_fit_the_crds(driven_registry):
    """What the registry writes is what the CRDs' schemas accept (the API server would refuse
    anything else)."""
    from jsonschema import Draft202012Validator

    crds = {
        (c["spec"]["group"], c["spec"]["names"]["plural"]): c
        for c in of_kind("CustomResourceDefinition")
    }
    group, _ = _registry_resources()
    assert driven_registry.stored
    for (plural, _), obj in driven_registry.stored.items():
        crd = crds[(group, plural)]
        (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
        assert obj["apiVersion"] == f"{group}/{version['name']}"
        assert obj["kind"] == crd["spec"]["names"]["kind"]
        schema = version["schema"]["openAPIV3Schema"]
        Draft202012Validator(schema).validate(obj)
