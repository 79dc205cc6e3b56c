"""A small client of the lab node's API server (lab/apiserver.py), for the lab CLI and tests.

Plain urllib and JSON, no `kubernetes` package: `api` is the server's URL as node.json gives it
("http://127.0.0.1:PORT"). Failures the server answers are ApiError with its HTTP code and
Status message; an unreachable server is ApiError with code 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
NODE_FILE = "node.json"


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message if not code else f"{code}: {message}")
        self.code = code
        self.message = message


class NodeError(Exception):
    """The node process did not come up (it exited, or did not write node.json in time)."""


def _call(api: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            message = json.loads(raw).get("message") or e.reason
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace") or str(e.reason)
        raise ApiError(e.code, str(message)) from e
    except (urllib.error.URLError, OSError) as e:
        raise ApiError(0, f"cannot reach the API server at {api}: {e}") from e


def _pods_path(namespace: str, name: str = "") -> str:
    path = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/pods"
    return f"{path}/{urllib.parse.quote(name)}" if name else path


def create_pod(api: str, pod: Obj) -> Obj:
    """POST the pod (its metadata.namespace, default "default"); returns it as stored."""
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    return _call(api, "POST", _pods_path(namespace), pod)


def delete_pod(api: str, namespace: str, name: str, grace: int | None = None) -> Obj:
    """Graceful delete (the kubelet part finalizes it); `grace=0` removes it at once."""
    query = "" if grace is None else f"?gracePeriodSeconds={grace}"
    return _call(api, "DELETE", _pods_path(namespace, name) + query)


def get_pod(api: str, namespace: str, name: str) -> Obj | None:
    """The pod, or None when there is none of that name."""
    try:
        return _call(api, "GET", _pods_path(namespace, name))
    except ApiError as e:
        if e.code == 404:
            return None
        raise


def list_pods(api: str, node: str | None = None) -> list[Obj]:
    """Every pod (of `node` only, when given), sorted by namespace and name."""
    query = (
        ""
        if node is None
        else "?" + urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node}"})
    )
    return list(_call(api, "GET", "/api/v1/pods" + query).get("items") or [])


def wait_pod(
    api: str,
    namespace: str,
    name: str,
    predicate: Callable[[Obj | None], bool],
    timeout: float = 30.0,
    interval: float = 0.1,
) -> Obj | None:
    """Poll until `predicate(pod)` (None: the pod is gone) holds; TimeoutError with the last."""
    deadline = time.monotonic() + timeout
    while True:
        pod = get_pod(api, namespace, name)
        if predicate(pod):
            return pod
        if time.monotonic() >= deadline:
            phase = None if pod is None else (pod.get("status") or {}).get("phase")
            raise TimeoutError(f"pod {namespace}/{name} not there in {timeout}s (phase {phase})")
        time.sleep(interval)


def read_node_file(state_dir: str) -> Obj | None:
    try:
        with open(os.path.join(state_dir, NODE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def api_url(state_dir: str) -> str:
    """The API server's URL from `state_dir`/node.json; ApiError (code 0) when there is none."""
    info = read_node_file(state_dir)
    if not info or not info.get("api"):
        raise ApiError(0, f"no node serving: {os.path.join(state_dir, NODE_FILE)} missing")
    return str(info["api"])


def wait_node_ready(
    state_dir: str, proc: subprocess.Popen[Any] | int, timeout: float = 30.0
) -> Obj:
    """Wait until the node process `proc` (a Popen or a pid) wrote `state_dir`/node.json;
    returns its content. NodeError if the process ended first or the time ran out."""
    pid = proc if isinstance(proc, int) else proc.pid
    deadline = time.monotonic() + timeout
    while True:
        info = read_node_file(state_dir)
        if info is not None and info.get("pid") == pid:
            return info
        if isinstance(proc, int):
            alive = os.path.exists(f"/proc/{pid}")
            rc: int | None = None if alive else -1
        else:
            rc = proc.poll()
        if rc is not None:
            raise NodeError(f"the node process ({pid}) exited ({rc}) before it was ready")
        if time.monotonic() >= deadline:
            raise NodeError(f"the node process ({pid}) was not ready in {timeout}s")
        time.sleep(0.05)
