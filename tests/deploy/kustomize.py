"""A small, strict stand-in for `kustomize build` (no kustomize or kubectl binary can be installed
here): exactly the features deploy/kustomization.yaml uses, done as kustomize does them, and an
error for any field it does not know, so nothing kustomize would do is silently skipped.

- `resources`: files (multi-document YAML) and directories holding a kustomization.yaml, in order;
  like kustomize's default load restrictor, no path may leave the kustomization's root.
- `namespace`: set on every namespaced object; ServiceAccount subjects of (Cluster)RoleBindings
  must already name it (kustomize rewrites them; we refuse to guess).
- `configMapGenerator` (files `[key=]path`, literals `key=value`; behavior create): ConfigMaps named
  `<name>-<hash>`, with kustomize's hash (sha256 of the Go-JSON encoding of kind, name and data,
  10 hex digits with 0 1 3 a e replaced by g h k m t), and every reference to them in pod templates
  renamed (volumes, projected sources, env valueFrom, envFrom).
- `images` (name, newName, newTag, digest): the image of every container and init container.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import yaml

KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}
GENERATOR_FIELDS = {"name", "namespace", "behavior", "files", "literals"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
POD_TEMPLATE_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


class KustomizeError(Exception):
    pass


def load_yaml_docs(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _inside(root: str, rel: str) -> str:
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([path, os.path.realpath(root)]) != os.path.realpath(root):
        raise KustomizeError(f"{rel}: outside the kustomization root {root} (load restrictor)")
    if not os.path.exists(path):
        raise KustomizeError(f"{rel}: no such file or directory under {root}")
    return path


def read_kustomization(root: str) -> dict[str, Any]:
    path = os.path.join(root, "kustomization.yaml")
    with open(path, encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this loader does not implement: {sorted(unknown)}")
    return k


def config_map_hash(name: str, data: dict[str, str]) -> str:
    """kustomize's name suffix for a ConfigMap (api/hasher: encodeConfigMap, then encodeHash)."""
    doc = {"data": data, "kind": "ConfigMap", "name": name}  # Go's json.Marshal sorts map keys
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):  # Go's HTML escaping
        text = text.replace(ch, esc)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def generate_config_maps(root: str, k: dict[str, Any]) -> tuple[list[dict[str, Any]], dict]:
    """The generated ConfigMaps and {original name: hashed name}."""
    out, renames = [], {}
    for g in k.get("configMapGenerator") or []:
        unknown = set(g) - GENERATOR_FIELDS
        if unknown:
            raise KustomizeError(f"configMapGenerator {g.get('name')}: {sorted(unknown)}")
        if g.get("behavior", "create") != "create":
            raise KustomizeError(f"configMapGenerator {g['name']}: only behavior create here")
        data: dict[str, str] = {}
        for item in g.get("files") or []:
            key, sep, rel = item.partition("=")
            if not sep:
                key, rel = os.path.basename(item), item
            if key in data:
                raise KustomizeError(f"configMapGenerator {g['name']}: key {key} twice")
            with open(_inside(root, rel), encoding="utf-8") as f:
                data[key] = f.read()
        for item in g.get("literals") or []:
            key, sep, value = item.partition("=")
            if not sep or key in data:
                raise KustomizeError(f"configMapGenerator {g['name']}: bad literal {item!r}")
            data[key] = value
        name = f"{g['name']}-{config_map_hash(g['name'], data)}"
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        if g.get("namespace"):
            cm["metadata"]["namespace"] = g["namespace"]
        renames[g["name"]] = name
        out.append(cm)
    return out, renames


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj.get("kind") == "Pod":
        return obj.get("spec")
    if obj.get("kind") in POD_TEMPLATE_KINDS:
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _rename_config_maps(spec: dict[str, Any], renames: dict[str, str]) -> None:
    def swap(ref: dict[str, Any] | None) -> None:
        if ref and ref.get("name") in renames:
            ref["name"] = renames[ref["name"]]

    for v in spec.get("volumes") or []:
        swap(v.get("configMap"))
        for src in (v.get("projected") or {}).get("sources") or []:
            swap(src.get("configMap"))
    for c in containers(spec):
        for e in c.get("env") or []:
            swap((e.get("valueFrom") or {}).get("configMapKeyRef"))
        for e in c.get("envFrom") or []:
            swap(e.get("configMapRef"))


def _set_images(spec: dict[str, Any], images: list[dict[str, Any]]) -> None:
    for c in containers(spec):
        image = c["image"]
        name, tag = image.split("@", 1)[0], ""
        if ":" in name.rsplit("/", 1)[-1]:
            name, tag = name.rsplit(":", 1)
        for im in images:
            if im["name"] != name:
                continue
            new = im.get("newName", name)
            if im.get("digest"):
                c["image"] = f"{new}@{im['digest']}"
            else:
                c["image"] = f"{new}:{im.get('newTag', tag)}" if im.get("newTag", tag) else new


def build(root: str) -> list[dict[str, Any]]:
    """The objects `kustomize build root` would print (in input order, not kustomize's)."""
    k = read_kustomization(root)
    objs: list[dict[str, Any]] = []
    for rel in k.get("resources") or []:
        path = _inside(root, rel)
        if os.path.isdir(path):
            objs.extend(build(path))
        else:
            objs.extend(load_yaml_docs(path))
    generated, renames = generate_config_maps(root, k)
    objs.extend(generated)
    images = k.get("images") or []
    for im in images:
        if set(im) - IMAGE_FIELDS:
            raise KustomizeError(f"images: {sorted(set(im) - IMAGE_FIELDS)}")
    ns = k.get("namespace")
    for obj in objs:
        meta = obj.setdefault("metadata", {})
        if ns and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = ns
        if ns and obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for s in obj.get("subjects") or []:
                if s.get("kind") == "ServiceAccount" and s.get("namespace") != ns:
                    raise KustomizeError(f"{obj['kind']} {meta['name']}: subject not in {ns}")
        spec = pod_spec(obj)
        if spec is not None:
            _rename_config_maps(spec, renames)
            _set_images(spec, images)
    seen = set()
    for obj in objs:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{key}: twice (kustomize refuses duplicate ids)")
        seen.add(key)
    return objs
