"""A minimal Kubernetes API server for pods, over plain HTTP on 127.0.0.1, for the lab.

Enough of the core/v1 pods REST API for the official `kubernetes` Python client (and so nsmgr's
KubernetesPodSource, unchanged, through a kubeconfig this module writes):

    GET    /api/v1/pods                                 list, or watch with ?watch=true
    GET    /api/v1/namespaces/{ns}/pods                 the same within one namespace
    POST   /api/v1/namespaces/{ns}/pods                 create
    GET    /api/v1/namespaces/{ns}/pods/{name}          one pod
    DELETE /api/v1/namespaces/{ns}/pods/{name}          graceful delete (see below)
    PATCH  /api/v1/namespaces/{ns}/pods/{name}/status   JSON merge patch of .status (kubelet's)
    PUT    /api/v1/namespaces/{ns}/pods/{name}/status   replace .status (kubelet's)
    GET    /healthz, /readyz, /version

Queries: fieldSelector (`a.b=v`, `a.b==v`, `a.b!=v`, comma-separated, on metadata.name,
metadata.namespace, spec.nodeName, status.phase and a few more), labelSelector (`k=v`, `k!=v`,
`k`, `!k`), resourceVersion, timeoutSeconds, allowWatchBookmarks.

As the real server does: every change bumps one global resourceVersion; a watch from version N
replays the changes after N and then streams (`{"type","object"}` lines, chunked), a watch from
"" or "0" starts with an ADDED per current pod; a version older than the kept history is answered
with an ERROR event carrying a 410 Status (the client raises ApiException(410)); the watch ends
after timeoutSeconds; BOOKMARK events carry the current version when asked for. Deleting a pod
that is on a node, not finished and not deleted with gracePeriodSeconds=0 only sets
metadata.deletionTimestamp (a MODIFIED event): the pod goes (DELETED) when its kubelet
finalizes it (`PodStore.finalize`, or DELETE with gracePeriodSeconds=0).

No authentication, no admission, no other kinds: it is the lab's, on the loopback only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Predicate = Callable[[Obj], bool]

DEFAULT_GRACE = 30  # seconds: a pod's terminationGracePeriodSeconds when it gives none
TERMINAL_PHASES = ("Succeeded", "Failed")
# The fields the real server lets one select pods by (a subset of its pod field label set).
POD_FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An API failure, answered as a Kubernetes Status object with `code`."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def _not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'pods "{name}" not found')


@dataclass(frozen=True)
class Event:
    """One change, as a watch sends it; `obj` is a snapshot taken when it happened."""

    rv: int
    type: str
    obj: Obj


# --- selectors ---------------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return "" if cur is None else str(cur)


def _terms(text: str) -> list[tuple[str, str, str]]:
    """`a=b,c!=d,e,!f` as (key, op, value); ops '=', '!=', 'exists', '!exists'."""
    out = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in raw:
            k, _, v = raw.partition("!=")
            out.append((k.strip(), "!=", v.strip()))
        elif "=" in raw:
            k, _, v = raw.partition("==") if "==" in raw else raw.partition("=")
            out.append((k.strip(), "=", v.strip()))
        elif raw.startswith("!"):
            out.append((raw[1:].strip(), "!exists", ""))
        else:
            out.append((raw, "exists", ""))
    return out


def field_selector(text: str) -> Predicate:
    """The API server's field selector for pods; ApiError 400 for what it would refuse."""
    terms = _terms(text)
    for key, op, _ in terms:
        if op not in ("=", "!="):
            raise ApiError(400, "BadRequest", f"invalid field selector: {text!r}")
        if key not in POD_FIELDS:
            raise ApiError(400, "BadRequest", f'field label not supported: "{key}"')
    return lambda obj: all((_field(obj, k) == v) == (op == "=") for k, op, v in terms)


def label_selector(text: str) -> Predicate:
    """Equality-based label selectors (set-based `in (...)` is refused with 400)."""
    if "(" in text:
        raise ApiError(400, "BadRequest", f"set-based label selectors are not served: {text!r}")
    terms = _terms(text)

    def match(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for k, op, v in terms:
            if op == "exists" and k not in labels:
                return False
            if op == "!exists" and k in labels:
                return False
            if op == "=" and labels.get(k) != v:
                return False
            if op == "!=" and labels.get(k) == v:
                return False
        return True

    return match


# --- the store ---------------------------------------------------------------------------------


class PodStore:
    """The pods, one global resourceVersion and the recent changes (for watches).

    Thread-safe; every method returns copies, so callers may keep or change what they get.
    """

    def __init__(self, history: int = 1000) -> None:
        self._cond = threading.Condition()
        self._pods: dict[tuple[str, str], Obj] = {}
        self._rv = 0
        self._events: deque[Event] = deque(maxlen=history)
        self.closed = False

    # -- reading ----------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def list(self, predicate: Predicate | None = None) -> tuple[list[Obj], int]:
        """The matching pods and the version they are current at."""
        with self._cond:
            items = [copy.deepcopy(p) for p in self._pods.values() if not predicate or predicate(p)]
            return items, self._rv

    def get(self, namespace: str, name: str) -> Obj:
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None:
                raise _not_found(name)
            return copy.deepcopy(pod)

    def events_after(self, rv: int) -> list[Event]:
        """The changes after version `rv`; ApiError 410 when some are no longer kept."""
        with self._cond:
            if rv >= self._rv:
                return []
            first = self._events[0].rv if self._events else self._rv + 1
            if rv + 1 < first:
                raise ApiError(
                    410, "Expired", f"too old resource version: {rv} ({first - 1})"
                )  # the real server's words
            return [e for e in self._events if e.rv > rv]

    def wait_change(self, rv: int, timeout: float) -> int:
        """Block until the version passes `rv` (or the store closes, or `timeout`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._rv > rv or self.closed, timeout)
            return self._rv

    def close(self) -> None:
        """Ends every watch (the server is stopping)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # -- writing ----------------------------------------------------------------------------
    def _record(self, kind: str, pod: Obj) -> Obj:
        """Bump the version into `pod` and keep the change; the caller holds the lock."""
        self._rv += 1
        pod.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        snapshot = copy.deepcopy(pod)
        self._events.append(Event(self._rv, kind, snapshot))
        self._cond.notify_all()
        return copy.deepcopy(snapshot)

    def create(self, namespace: str, body: Obj) -> Obj:
        """POST: validate, default, assign uid/version/creationTimestamp; ADDED."""
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        pod = copy.deepcopy(body)
        if pod.get("kind", "Pod") != "Pod":
            raise ApiError(400, "BadRequest", f"expected kind Pod, got {pod.get('kind')!r}")
        meta = pod.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        spec = pod.get("spec")
        problems = []
        if not name:
            problems.append("metadata.name: Required value: name or generateName is required")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not isinstance(containers, list) or not containers:
            problems.append("spec.containers: Required value")
        else:
            for i, c in enumerate(containers):
                if not isinstance(c, dict) or not c.get("name"):
                    problems.append(f"spec.containers[{i}].name: Required value")
        if problems:
            raise ApiError(422, "Invalid", f'Pod "{name}" is invalid: ' + ", ".join(problems))
        assert isinstance(spec, dict)
        for key in ("labels", "annotations"):
            values = meta.get(key) or {}
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                raise ApiError(400, "BadRequest", f"metadata.{key}: values must be strings")
        for c in [*containers, *(spec.get("initContainers") or [])]:
            _canonical_resources(c)
        meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(k, None)
        spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE)
        spec.setdefault("restartPolicy", "Always")
        pod["apiVersion"], pod["kind"] = "v1", "Pod"
        pod["status"] = {"phase": "Pending"}
        with self._cond:
            if (namespace, name) in self._pods:
                raise ApiError(409, "AlreadyExists", f'pods "{name}" already exists')
            self._pods[(namespace, name)] = pod
            return self._record("ADDED", pod)

    def delete(self, namespace: str, name: str, grace: int | None = None) -> Obj:
        """DELETE: graceful (deletionTimestamp, MODIFIED) for a pod on a node that is not
        finished, else immediate (DELETED), as the real pod registry decides."""
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None:
                raise _not_found(name)
            meta, spec = pod["metadata"], pod.get("spec") or {}
            if grace is None:
                grace = int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE))
            phase = (pod.get("status") or {}).get("phase")
            if grace <= 0 or not spec.get("nodeName") or phase in TERMINAL_PHASES:
                del self._pods[(namespace, name)]
                return self._record("DELETED", pod)
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(pod)  # already going; a second DELETE changes nothing
            meta["deletionTimestamp"] = _rfc3339(time.time() + grace)
            meta["deletionGracePeriodSeconds"] = grace
            return self._record("MODIFIED", pod)

    def finalize(self, namespace: str, name: str, uid: str | None = None) -> Obj | None:
        """The kubelet is done with the pod: it goes (DELETED). None if it was gone already
        (or is another pod of that name, when `uid` is given)."""
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None or (uid and pod["metadata"].get("uid") != uid):
                return None
            del self._pods[(namespace, name)]
            return self._record("DELETED", pod)

    def update_status(
        self, namespace: str, name: str, status: Obj, *, uid: str | None = None, merge: bool = True
    ) -> Obj:
        """The kubelet's status update (merged, or replacing with merge=False); MODIFIED."""
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None or (uid and pod["metadata"].get("uid") != uid):
                raise _not_found(name)
            pod["status"] = _merge(pod.get("status") or {}, status) if merge else dict(status)
            return self._record("MODIFIED", pod)


def _quantity(value: Any) -> str:
    """A resource quantity as the real server stores it: a string (1 -> "1", 0.5 -> "500m")."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(400, "BadRequest", f"quantities must be numbers or strings, not {value!r}")
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{round(value * 1000)}m"
    return str(value)


def _canonical_resources(container: Obj) -> None:
    """Quantities as strings: the kubernetes client's models refuse numbers there."""
    resources = container.get("resources")
    if not isinstance(resources, dict):
        return
    for part in ("limits", "requests"):
        values = resources.get(part)
        if isinstance(values, dict):
            resources[part] = {k: _quantity(v) for k, v in values.items()}


def _merge(target: Obj, patch: Mapping[str, Any]) -> Obj:
    """RFC 7386 JSON merge patch."""
    out = copy.deepcopy(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- HTTP ----------------------------------------------------------------------------------------


def _peer_gone(sock: socket.socket) -> bool:
    """The client closed its end (Watch.stop() shuts the socket): nothing left to stream to."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked watch streams
    server: _Server
    timeout = 120  # an idle keep-alive connection's thread does not linger forever

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api %s: " + format, self.address_string(), *args)

    # -- plumbing ---------------------------------------------------------------------------
    def _send_json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"the body is not JSON: {e}") from e

    def _route(self) -> tuple[list[str], dict[str, str]]:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        return [p for p in url.path.split("/") if p], query

    def _handle(self, method: str) -> None:
        try:
            parts, query = self._route()
            self._dispatch(method, parts, query)
        except ApiError as e:
            self._send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # one bad request must not take the server down
            log.exception("api: %s %s failed", method, self.path)
            self._send_json(500, ApiError(500, "InternalError", str(e)).status())

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    # -- routes -----------------------------------------------------------------------------
    def _dispatch(self, method: str, parts: list[str], query: dict[str, str]) -> None:
        store = self.server.store
        if method == "GET" and parts in (["healthz"], ["readyz"], ["livez"]):
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if method == "GET" and parts == ["version"]:
            self._send_json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-nsm-lab"})
            return
        if parts[:2] != ["api", "v1"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rest = parts[2:]
        if rest == ["pods"] and method == "GET":
            self._list_or_watch(None, query)
            return
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == "pods":
            ns = rest[1]
            tail = rest[3:]
            if not tail and method == "GET":
                self._list_or_watch(ns, query)
                return
            if not tail and method == "POST":
                body = self._body()
                self._send_json(201, store.create(ns, body))
                return
            if len(tail) == 1 and method == "GET":
                self._send_json(200, store.get(ns, tail[0]))
                return
            if len(tail) == 1 and method == "DELETE":
                self._send_json(200, store.delete(ns, tail[0], self._grace(query)))
                return
            if len(tail) == 2 and tail[1] == "status" and method in ("PATCH", "PUT"):
                self._status(method, ns, tail[0])
                return
        raise ApiError(
            404,
            "NotFound",
            f"the server could not find the requested resource: {method} {self.path}",
        )

    def _grace(self, query: dict[str, str]) -> int | None:
        body = self._body()
        value = query.get("gracePeriodSeconds")
        if isinstance(body, dict) and body.get("gracePeriodSeconds") is not None:
            value = body["gracePeriodSeconds"]
        try:
            return None if value in (None, "") else int(value)
        except (TypeError, ValueError) as e:
            raise ApiError(400, "BadRequest", f"bad gracePeriodSeconds {value!r}") from e

    def _status(self, method: str, ns: str, name: str) -> None:
        body = self._body()
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        status = body.get("status") or {}
        uid = (body.get("metadata") or {}).get("uid")
        pod = self.server.store.update_status(ns, name, status, uid=uid, merge=method == "PATCH")
        self._send_json(200, pod)

    def _selector(self, ns: str | None, query: dict[str, str]) -> Predicate:
        tests = [field_selector(query.get("fieldSelector", ""))]
        tests.append(label_selector(query.get("labelSelector", "")))
        if ns is not None:
            tests.append(lambda o: (o.get("metadata") or {}).get("namespace") == ns)
        return lambda o: all(t(o) for t in tests)

    def _list_or_watch(self, ns: str | None, query: dict[str, str]) -> None:
        match = self._selector(ns, query)
        if query.get("watch") in ("true", "1"):
            self._watch(match, query)
            return
        items, rv = self.server.store.list(match)
        items.sort(key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))
        self._send_json(
            200,
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    # -- watch ------------------------------------------------------------------------------
    def _chunk(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, match: Predicate, query: dict[str, str]) -> None:
        store = self.server.store
        try:
            timeout = float(query.get("timeoutSeconds") or self.server.max_watch)
        except ValueError as e:
            raise ApiError(400, "BadRequest", "bad timeoutSeconds") from e
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        start = query.get("resourceVersion", "")
        try:
            rv = int(start) if start not in ("", "0") else None
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"bad resourceVersion {start!r}") from e
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if rv is None:  # from "now": the current state first, as ADDED events
            items, rv = store.list(match)
            for pod in items:
                self._chunk({"type": "ADDED", "object": pod})
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.server.bookmark_interval
        try:
            while not store.closed and not self.server.stopping:
                try:
                    events = store.events_after(rv)
                except ApiError as e:  # 410: an ERROR event in a 200 stream, as the real one
                    self._chunk({"type": "ERROR", "object": e.status()})
                    break
                for ev in events:
                    rv = ev.rv
                    if match(ev.obj):
                        self._chunk({"type": ev.type, "object": ev.obj})
                now = time.monotonic()
                # a bookmark every interval, and one as the watch ends (as the real server's
                # cache does before a deadline), so the client resumes from the newest version
                if bookmarks and (now >= next_bookmark or now >= deadline):
                    next_bookmark = now + self.server.bookmark_interval
                    self._chunk(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Pod",
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(rv)},
                            },
                        }
                    )
                if now >= deadline:
                    break
                if _peer_gone(self.connection):
                    self.close_connection = True
                    return
                wake = min(deadline, next_bookmark) if bookmarks else deadline
                store.wait_change(rv, min(1.0, max(0.0, wake - now)))
            self.wfile.write(b"0\r\n\r\n")  # the end of the chunked body: the watch is over
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], store: PodStore) -> None:
        super().__init__(address, _Handler)
        self.store = store
        self.stopping = False
        self.bookmark_interval = 10.0
        self.max_watch = 1800.0


class ApiServer:
    """The pods API over HTTP on `host` (port 0: a free one), serving `store`."""

    def __init__(
        self,
        store: PodStore | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bookmark_interval: float = 10.0,
        max_watch: float = 1800.0,
    ) -> None:
        self.store = store or PodStore()
        self._server = _Server((host, port), self.store)
        self._server.bookmark_interval = bookmark_interval
        self._server.max_watch = max_watch
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ApiServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="api"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("api server at %s", self.url)
        return self

    def stop(self) -> None:
        self._server.stopping = True
        self.store.close()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5.0)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str) -> str:
        """A kubeconfig for this server (no auth), written atomically; returns `path`."""
        return write_kubeconfig(path, self.url)


def write_kubeconfig(path: str, server: str, name: str = "nsm-lab") -> str:
    """A kubeconfig naming `server` with no credentials, written atomically (JSON is YAML)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o644)
    return path
