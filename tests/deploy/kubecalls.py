"""Which Kubernetes API calls a component's code makes, read from the code itself.

Every attribute named like a method of the `kubernetes` client's API classes
(`list_pod_for_all_namespaces`, `create_namespaced_custom_object`, ...) is a call. What it asks of
the API server is read from the client's own source: the method's `_<name>_serialize` holds its
HTTP method and resource path (`GET /api/v1/pods`), which give the RBAC verb, API group, resource
and scope. A method passed to a watch's `stream()` (or called with `watch=True`) is a watch too.
Custom objects (`/apis/{group}/{version}/.../{plural}`) leave group and plural to arguments, which
the caller resolves from the component's declared constants.

Anything else that could reach the API server unseen (the client's raw `call_api`/`param_serialize`,
the dynamic client) is reported as `unresolved`, so a test fails instead of missing a call.
"""

from __future__ import annotations

import ast
import functools
import glob
import os
import re
from dataclasses import dataclass

import kubernetes

API_DIR = os.path.join(os.path.dirname(kubernetes.__file__), "client", "api")
_METHOD_RE = re.compile(r"^(list|read|create|replace|patch|delete|get|watch|connect)_\w+$")
_SERIALIZE_RE = re.compile(
    r"def _(\w+)_serialize\(.*?param_serialize\(\s*method='(\w+)',\s*resource_path='([^']+)'",
    re.S,
)
RAW_ACCESS = {"call_api", "param_serialize", "DynamicClient"}


@dataclass(frozen=True)
class Call:
    """One kind of request: RBAC verb, API group, resource (with /subresource), scope."""

    verb: str
    group: str
    resource: str
    namespaced: bool  # False: cluster-wide (all namespaces, or a cluster-scoped resource)
    where: str  # file:line of the first place it was seen

    def key(self) -> tuple[str, str, str, bool]:
        return (self.verb, self.group, self.resource, self.namespaced)


@functools.cache
def client_paths() -> dict[str, set[tuple[str, str]]]:
    """kubernetes client method name -> {(HTTP method, resource path)} over every API class."""
    out: dict[str, set[tuple[str, str]]] = {}
    for path in glob.glob(os.path.join(API_DIR, "*_api.py")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for name, method, resource_path in _SERIALIZE_RE.findall(text):
            out.setdefault(name, set()).add((method, resource_path))
    return out


def describe(http_method: str, path: str, watch: bool) -> list[tuple[str, str, str, bool]]:
    """(verb, group, resource, namespaced) of one client method's request."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":  # /api/v1/...
        group, rest = "", parts[2:]
    else:  # /apis/<group>/<version>/...
        group, rest = parts[1], parts[3:]
    namespaced = len(rest) >= 2 and rest[0] == "namespaces" and rest[1] == "{namespace}"
    if namespaced:
        rest = rest[2:]
    if not rest:
        return []  # discovery (get_api_resources): no RBAC on resources
    resource, named, sub = rest[0], len(rest) >= 2, rest[2] if len(rest) >= 3 else None
    if sub:
        resource = f"{resource}/{sub}"
    verb = {
        ("GET", True): "get",
        ("GET", False): "list",
        ("POST", False): "create",
        ("POST", True): "create",  # subresources such as pods/eviction, serviceaccounts/token
        ("PUT", True): "update",
        ("PATCH", True): "patch",
        ("DELETE", True): "delete",
        ("DELETE", False): "deletecollection",
    }[(http_method, named)]
    out = [(verb, group, resource, namespaced)]
    if watch and verb == "list":
        out.append(("watch", group, resource, namespaced))
    return out


@dataclass
class Scan:
    calls: dict[tuple[str, str, str, bool], Call]
    unresolved: list[str]  # places that reach the API in a way this scanner cannot read


def _py_files(paths: list[str], exclude: list[str]) -> list[str]:
    out = []
    for p in paths:
        for f in sorted(glob.glob(os.path.join(os.path.abspath(p), "**", "*.py"), recursive=True)):
            if not any(os.path.commonpath([f, e]) == e for e in exclude):
                out.append(f)
    return out


def scan(
    paths: list[str],
    *,
    exclude: list[str] | None = None,
    custom: tuple[str, set[str]] | None = None,
    root: str = ".",
) -> Scan:
    """The calls of the code under `paths`; `custom` = (group, plurals) for custom objects."""
    known = client_paths()
    calls: dict[tuple[str, str, str, bool], Call] = {}
    unresolved: list[str] = []
    for path in _py_files(paths, [os.path.abspath(e) for e in exclude or []]):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        rel = os.path.relpath(path, root)
        streamed = set()  # attribute nodes given to something's stream() (a watch)
        called_with_watch = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "stream" and node.args:
                    streamed.add(id(node.args[0]))
                if any(
                    kw.arg == "watch" and isinstance(kw.value, ast.Constant) and kw.value.value
                    for kw in node.keywords
                ):
                    called_with_watch.add(id(node.func))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Name) and node.id in RAW_ACCESS:
                name = node.id
            else:
                continue
            where = f"{rel}:{node.lineno}"
            if name in RAW_ACCESS:
                unresolved.append(f"{where}: {name}")
                continue
            if not _METHOD_RE.match(name) or name not in known:
                continue
            watch = id(node) in streamed or id(node) in called_with_watch
            for http_method, resource_path in known[name]:
                for verb, group, resource, namespaced in describe(
                    http_method, resource_path, watch
                ):
                    if group == "{group}" or "{plural}" in resource:
                        if custom is None:
                            unresolved.append(f"{where}: {name} (custom objects: which?)")
                            continue
                        group_, plurals = custom
                        for plural in sorted(plurals):
                            r = resource.replace("{plural}", plural)
                            c = Call(verb, group_, r, namespaced, where)
                            calls.setdefault(c.key(), c)
                        continue
                    c = Call(verb, group, resource, namespaced, where)
                    calls.setdefault(c.key(), c)
    return Scan(calls, unresolved)
