"""The Kubernetes store: the thin adapter over a fake CustomObjectsApi, the backend's optimistic
writes over the fake API server, and the CRD manifests against the objects the code writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nsmgr.registry import kube
from nsmgr.registry.errors import Conflict, StoreError
from nsmgr.registry.kube import CrdBackend, KubeAdapter
from nsmgr.registry.model import Endpoint, EndpointQuery, Service
from tests.nsmgr.registry.fake_kube import FakeCrds, FakeCustomObjectsApi

NOW = 1_700_000_000.0
CRDS = Path(__file__).resolve().parents[3] / "deploy" / "crds"
NSE = Endpoint(
    "torshim",
    ("myns.example.com",),
    {"myns.example.com": {"zone": "a"}},
    "tcp://10.0.0.5:5001",
    NOW + 60,
    NOW,
)


# -- the adapter ----------------------------------------------------------------------------------


def test_adapter_calls_our_group_version_and_namespace() -> None:
    api = FakeCustomObjectsApi()
    a = KubeAdapter("nsm-system", api=api, timeout=3.0)
    a.list(kube.ENDPOINTS)
    a.get(kube.SERVICES, "myns")
    body = {"metadata": {"name": "myns", "resourceVersion": "7"}, "spec": {}}
    a.create(kube.SERVICES, body)
    a.replace(kube.SERVICES, body)
    assert a.delete(kube.ENDPOINTS, "torshim", "9") is True
    assert [c[0] for c in api.calls] == [
        "list_namespaced_custom_object",
        "get_namespaced_custom_object",
        "create_namespaced_custom_object",
        "replace_namespaced_custom_object",
        "delete_namespaced_custom_object",
    ]
    for _method, args, kwargs in api.calls:
        assert args[:3] == ("nsm.sriov-nsm.io", "v1", "nsm-system")
        assert kwargs["_request_timeout"] == 3.0
    assert api.calls[3][1][3:] == ("networkservices", "myns", body)
    delete_kwargs = api.calls[4][2]
    assert delete_kwargs["body"] == {"preconditions": {"resourceVersion": "9"}}


@pytest.mark.parametrize(
    ("method", "status", "call", "outcome"),
    [
        ("get_namespaced_custom_object", 404, lambda a: a.get("networkservices", "x"), None),
        ("delete_namespaced_custom_object", 404, lambda a: a.delete("networkservices", "x"), False),
        (
            "create_namespaced_custom_object",
            409,
            lambda a: a.create("networkservices", _b()),
            Conflict,
        ),
        (
            "replace_namespaced_custom_object",
            409,
            lambda a: a.replace("networkservices", _b()),
            Conflict,
        ),
        (
            "replace_namespaced_custom_object",
            404,
            lambda a: a.replace("networkservices", _b()),
            Conflict,
        ),
        (
            "delete_namespaced_custom_object",
            409,
            lambda a: a.delete("networkservices", "x", "1"),
            Conflict,
        ),
        ("list_namespaced_custom_object", 403, lambda a: a.list("networkservices"), StoreError),
        ("get_namespaced_custom_object", 500, lambda a: a.get("networkservices", "x"), StoreError),
    ],
)
def test_adapter_translates_http_statuses(
    method: str, status: int, call: Any, outcome: Any
) -> None:
    api = FakeCustomObjectsApi()
    api.fail[method] = status
    a = KubeAdapter("nsm-system", api=api)
    if isinstance(outcome, type) and issubclass(outcome, Exception):
        with pytest.raises(outcome) as e:
            call(a)
        assert "\n" not in str(e.value)
        if outcome is StoreError:
            assert f"HTTP {status} Faked" in str(e.value)
    else:
        assert call(a) is outcome


def test_adapter_reports_an_unreachable_api_server_as_a_store_error() -> None:
    class Down:
        def list_namespaced_custom_object(self, *a: Any, **k: Any) -> Any:
            raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(StoreError, match=r"Kubernetes API: list networkservices: .*refused"):
        KubeAdapter("nsm-system", api=Down()).list("networkservices")


def _b() -> dict[str, Any]:
    return {"metadata": {"name": "x", "resourceVersion": "1"}, "spec": {}}


# -- the backend over the fake API server ---------------------------------------------------------


def test_objects_carry_the_registration_in_proto3_json() -> None:
    crds = FakeCrds()
    CrdBackend(crds).put_endpoint(NSE, NOW)
    obj = crds.objects["networkserviceendpoints"]["torshim"]
    assert obj["apiVersion"] == "nsm.sriov-nsm.io/v1" and obj["kind"] == "NetworkServiceEndpoint"
    assert obj["spec"] == {
        "networkServiceNames": ["myns.example.com"],
        "networkServiceLabels": {"myns.example.com": {"labels": {"zone": "a"}}},
        "url": "tcp://10.0.0.5:5001",
        "expirationTime": "2023-11-14T22:14:20.000000Z",
        "initialRegistrationTime": "2023-11-14T22:13:20.000000Z",
    }


def test_a_write_that_loses_a_race_is_redone_from_a_fresh_read() -> None:
    crds = FakeCrds()
    b = CrdBackend(crds)
    b.put_endpoint(NSE, NOW)
    crds.meddle("networkserviceendpoints", "torshim")  # another registry writes in between
    later = Endpoint(NSE.name, NSE.network_service_names, {}, NSE.url, NOW + 120, NOW + 30)
    stored = b.put_endpoint(later, NOW + 30)
    assert stored.expires == NOW + 120 and stored.registered == NOW  # a refresh, not lost
    [found] = b.find_endpoints(EndpointQuery(name="torshim"), NOW + 30)
    assert found.expires == NOW + 120


def test_endless_conflicts_give_up_with_one_line() -> None:
    crds = FakeCrds()
    b = CrdBackend(crds)
    b.put_service(Service("myns"))
    for _ in range(kube.WRITE_ATTEMPTS):
        crds.meddle("networkservices", "myns")
    with pytest.raises(StoreError, match="gave up after 5 conflicts"):
        b.put_service(Service("myns", "IP"))


def test_expiry_spares_an_endpoint_refreshed_meanwhile() -> None:
    crds = FakeCrds()
    b = CrdBackend(crds)
    b.put_endpoint(NSE, NOW)
    b.put_endpoint(Endpoint("other", ("x",), {}, "tcp://10.0.0.6:1", NOW + 60, NOW), NOW)
    crds.meddle("networkserviceendpoints", "torshim")  # refreshed between the list and the delete
    gone = b.expire(NOW + 61)
    assert [e.name for e in gone] == ["other"]
    assert "torshim" in crds.objects["networkserviceendpoints"]


# -- the manifests --------------------------------------------------------------------------------


def _crd(plural: str) -> dict[str, Any]:
    for path in CRDS.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if doc["spec"]["names"]["plural"] == plural:
            return doc
    raise AssertionError(f"no CRD for {plural} in {CRDS}")


def _check(value: Any, schema: dict[str, Any], where: str) -> None:
    """The part of OpenAPI v3 structural schemas our manifests use."""
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}
    if kind:
        assert isinstance(value, types[kind]), f"{where}: {value!r} is not {kind}"
    if kind == "object":
        for key in schema.get("required", []):
            assert key in value, f"{where}: {key} is required"
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                _check(v, props[k], f"{where}.{k}")
            elif isinstance(extra, dict):
                _check(v, extra, f"{where}.{k}")
            else:
                assert props is None or k in props, f"{where}: {k} is not in the schema"
    if kind == "array":
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{where}[{i}]")


@pytest.mark.parametrize("plural", [kube.SERVICES, kube.ENDPOINTS])
def test_crds_name_what_the_code_writes(plural: str) -> None:
    crd = _crd(plural)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.{kube.GROUP}"
    assert crd["spec"]["group"] == kube.GROUP and crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == kube.KINDS[plural]
    [version] = crd["spec"]["versions"]
    assert version["name"] == kube.VERSION and version["served"] and version["storage"]


@pytest.mark.parametrize("plural", [kube.SERVICES, kube.ENDPOINTS])
def test_objects_the_code_writes_fit_the_crd_schema(plural: str) -> None:
    crds = FakeCrds()
    b = CrdBackend(crds)
    if plural == kube.SERVICES:
        match = {
            "sourceSelector": {"app": "client"},
            "routes": [{"destinationSelector": {"app": "fw"}, "weight": 1}],
            "fallthrough": True,
            "metadata": {"labels": {"x": "y"}},
        }
        b.put_service(Service("myns", "ETHERNET", (match,)))
    else:
        b.put_endpoint(NSE, NOW)
    [obj] = crds.objects[plural].values()
    schema = _crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    _check(obj, schema, plural)
