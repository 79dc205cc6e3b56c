"""The rendered deploy/ kustomization and small lookups on it, shared by the deploy tests."""

from __future__ import annotations

import copy
import functools
import os
import re
import tomllib
from typing import Any

from tests.deploy import kustomize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
NAMESPACE = "sriov-nsm"
KUBE_VERSION = "1.33.0"  # the Kubernetes version whose schemas the manifests are validated against

# component -> (workload kind, its console script); the workload and its container share the name
COMPONENTS = {
    "sriov-device-plugin": ("DaemonSet", "sriov-device-plugin"),
    "nsmgr": ("DaemonSet", "nsmgr"),
    "nsm-registry": ("Deployment", "nsm-registry"),
    "torshim": ("Deployment", "torshim"),
}


@functools.cache
def _rendered() -> tuple[dict[str, Any], ...]:
    return tuple(kustomize.build(DEPLOY))


def rendered() -> list[dict[str, Any]]:
    """`kustomize build deploy`, a fresh copy each call (tests may change what they get)."""
    return copy.deepcopy(list(_rendered()))


def find(kind: str, name: str, objs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    for o in rendered() if objs is None else objs:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise KeyError(f"no {kind} {name} in the rendered manifests")


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered() if o["kind"] == kind]


def workload(component: str) -> dict[str, Any]:
    return find(COMPONENTS[component][0], component)


def pod_spec(component: str) -> dict[str, Any]:
    return workload(component)["spec"]["template"]["spec"]


def container(component: str) -> dict[str, Any]:
    (c,) = [c for c in pod_spec(component)["containers"] if c["name"] == component]
    return c


def volume(component: str, name: str) -> dict[str, Any]:
    (v,) = [v for v in pod_spec(component)["volumes"] if v["name"] == name]
    return v


def covering_mount(component: str, path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The container's mount holding `path` (the longest mountPath above it) and its volume."""
    best = None
    for m in container(component).get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/") or "/"
        if (path == mp or path.startswith(mp + "/")) and (
            best is None or len(mp) > len(best["mountPath"])
        ):
            best = m
    return None if best is None else (best, volume(component, best["name"]))


def host_path_of(component: str, path: str) -> str | None:
    """Where `path` in the container is on the node, if a hostPath volume holds it."""
    found = covering_mount(component, path)
    if found is None or "hostPath" not in found[1]:
        return None
    mount, vol = found
    return vol["hostPath"]["path"] + path[len(mount["mountPath"].rstrip("/")) :]


def config_map_data(component: str, path: str) -> str:
    """The content of the file `path` in the container, which a ConfigMap volume must provide."""
    found = covering_mount(component, path)
    assert found is not None, f"{component}: nothing is mounted at {path}"
    mount, vol = found
    assert "configMap" in vol, f"{component}: {path} is on volume {vol['name']}, not a ConfigMap"
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    cm = find("ConfigMap", vol["configMap"]["name"])
    assert key in cm["data"], f"{component}: ConfigMap {cm['metadata']['name']} has no key {key}"
    return cm["data"][key]


def env_value(component: str, name: str) -> dict[str, Any]:
    for e in container(component).get("env") or []:
        if e["name"] == name:
            return e
    raise KeyError(f"{component}: no env {name}")


_VAR_RE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SAMPLE_FIELD_VALUES = {
    "spec.nodeName": "node-a",
    "metadata.name": "torshim-5d8f7-abcde",
    "metadata.namespace": NAMESPACE,
    "status.podIP": "10.244.1.7",
}


def command(component: str) -> list[str]:
    """The container's command with $(VAR) expanded as kubelet would, from sample field values."""
    c = container(component)
    args = [*(c.get("command") or []), *(c.get("args") or [])]

    def sub(m: re.Match[str]) -> str:
        ref = env_value(component, m.group(1))["valueFrom"]["fieldRef"]["fieldPath"]
        return SAMPLE_FIELD_VALUES[ref]

    return [_VAR_RE.sub(sub, a) for a in args]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` (the manifests always use that form)."""
    for a in args:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


@functools.cache
def pyproject() -> dict[str, Any]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def console_scripts() -> dict[str, str]:
    return dict(pyproject()["project"]["scripts"])
