"""The pods of this node from the Kubernetes API server: the only code that knows its REST API.

List with `fieldSelector=spec.nodeName=<node>`, then watch from the list's resourceVersion,
re-watching from the last version seen when the server ends a watch; a 410 Gone (the version has
been compacted away) means relist, any other failure a relist after a growing pause. Each
relist is diffed against the cache, so pods deleted while nobody watched become DELETED events.

The `kubernetes` package is imported only by `from_config`, so the rest of nsmgr runs without it;
tests hand in objects shaped like its CoreV1Api and Watch.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from nsmgr.pods.errors import PodSourceError
from nsmgr.pods.podsource import Pod, PodSource

log = logging.getLogger(__name__)

HTTP_GONE = 410


class WatchLike(Protocol):
    """What kubernetes.watch.Watch offers: stream(func, **kwargs) of event dicts, and stop()."""

    def stream(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[Any]: ...

    def stop(self) -> None: ...


class _Gone(Exception):
    """The watch's resourceVersion is too old: only a new list helps."""


def pod_from_object(obj: Mapping[str, Any]) -> Pod:
    """A Pod from the API's JSON (camelCase keys, as in a watch event's raw_object)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    deletion = meta.get("deletionTimestamp")
    return Pod(
        namespace=meta.get("namespace") or "",
        name=meta.get("name") or "",
        uid=meta.get("uid") or "",
        node=spec.get("nodeName") or "",
        annotations=dict(meta.get("annotations") or {}),
        phase=status.get("phase") or "Pending",
        deletion_timestamp=None if deletion is None else str(deletion),
        resource_version=meta.get("resourceVersion") or "",
    )


def _status_code(e: BaseException) -> int | None:
    """kubernetes.client.ApiException carries the HTTP status as `.status`."""
    status = getattr(e, "status", None)
    return status if isinstance(status, int) else None


class KubernetesPodSource(PodSource):
    """List-then-watch of one node's pods, in a thread of its own."""

    def __init__(
        self,
        node: str,
        core_api: Any,
        watch_factory: Callable[[], WatchLike],
        *,
        to_dict: Callable[[Any], Any] | None = None,
        watch_timeout: int = 300,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
    ) -> None:
        super().__init__()
        if not node:
            raise PodSourceError("no node name: pods cannot be selected by spec.nodeName")
        self.node = node
        self.field_selector = f"spec.nodeName={node}"
        self._core = core_api
        self._watch_factory = watch_factory
        self._to_dict = to_dict or (lambda o: o)
        self._watch_timeout = watch_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stop = threading.Event()
        self._watch: WatchLike | None = None
        self._thread: threading.Thread | None = None
        self.lists = 0  # how many complete lists were taken (for tests and status)

    @classmethod
    def from_config(
        cls, node: str, kubeconfig: str | None = None, **kw: Any
    ) -> KubernetesPodSource:
        """With the kubernetes client: `kubeconfig` if given, else the in-cluster service account."""
        try:
            from kubernetes import client, config, watch
        except ImportError as e:
            raise PodSourceError("the 'kubernetes' Python package is not installed") from e
        try:
            if kubeconfig:
                api_client = config.new_client_from_config(config_file=kubeconfig)
            else:
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)
                api_client = client.ApiClient(cfg)
        except Exception as e:  # ConfigException, OSError, YAML errors: all one line for the user
            where = kubeconfig or "the in-cluster service account"
            raise PodSourceError(f"cannot configure the Kubernetes client from {where}: {e}") from e

        return cls(
            node,
            client.CoreV1Api(api_client),
            watch.Watch,
            to_dict=api_client.sanitize_for_serialization,
            **kw,
        )

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nsm-pods-k8s", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        deadline = time.monotonic() + timeout
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            # stopping the watch shuts its socket so a blocked read returns; repeated because a
            # stop that lands just before the request is sent is forgotten by Watch.stream
            w = self._watch
            if w is not None:
                w.stop()
            thread.join(0.1)

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._backoff_initial
        while not self._stop.is_set():
            try:
                version = self.relist()
                delay = self._backoff_initial
                while not self._stop.is_set():
                    version = self.watch_once(version)
            except _Gone:
                log.info("pod watch of %s expired (410 Gone): listing again", self.node)
                continue
            except Exception as e:  # the loop must outlive any API trouble
                log.warning("pod list/watch of %s failed: %s (again in %.0fs)", self.node, e, delay)
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff_max)

    def relist(self) -> str:
        """One complete list into the cache; returns its resourceVersion."""
        try:
            result = self._core.list_pod_for_all_namespaces(field_selector=self.field_selector)
        except Exception as e:
            if _status_code(e) == HTTP_GONE:
                raise _Gone() from e
            raise
        data = self._to_dict(result)
        items = [pod_from_object(o) for o in data.get("items") or []]
        self._replace(p for p in items if p.node == self.node)
        self.lists += 1
        return (data.get("metadata") or {}).get("resourceVersion") or ""

    def watch_once(self, version: str) -> str:
        """One watch request until the server ends it; returns the last version seen."""
        w = self._watch_factory()
        self._watch = w
        if self._stop.is_set():  # stop() ran before _watch was set: do not block on a new watch
            return version
        try:
            for event in w.stream(
                self._core.list_pod_for_all_namespaces,
                field_selector=self.field_selector,
                resource_version=version,
                allow_watch_bookmarks=True,
                # the server ends the watch by then; jitter keeps many nodes apart
                timeout_seconds=int(self._watch_timeout * random.uniform(1.0, 1.2)),
            ):
                version = self.apply_event(event, version)
                if self._stop.is_set():
                    break
        except _Gone:
            raise
        except Exception as e:
            if _status_code(e) == HTTP_GONE:
                raise _Gone() from e
            raise
        finally:
            self._watch = None
        return version

    def apply_event(self, event: Mapping[str, Any], version: str) -> str:
        """One watch event (as kubernetes.watch yields it) into the cache; returns the version."""
        kind = event.get("type")
        obj = event.get("raw_object")
        if obj is None:
            obj = self._to_dict(event.get("object"))
        if kind == "ERROR":  # a Status object; the client raises these itself, older ones yield
            code = obj.get("code") if isinstance(obj, Mapping) else None
            if code == HTTP_GONE:
                raise _Gone()
            message = obj.get("message") if isinstance(obj, Mapping) else obj
            raise PodSourceError(f"pod watch error {code}: {message}")
        new_version = ((obj or {}).get("metadata") or {}).get("resourceVersion") or version
        if kind == "BOOKMARK":
            return new_version
        pod = pod_from_object(obj)
        if kind == "DELETED" or pod.node != self.node:
            self._remove(pod.uid, pod)
        elif kind in ("ADDED", "MODIFIED"):
            self._upsert(pod)
        else:
            log.debug("pod watch: ignoring event type %r", kind)
        return new_version
