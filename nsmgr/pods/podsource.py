"""Pods of this node as events, whatever they come from (the API server, a fake, the lab).

A PodSource keeps the current pods (a cache, like an informer's store) and tells subscribers
about every change. `has_synced()` turns true once a complete list has been seen: before that
an unknown pod is not a gone pod, so nobody may close connections on its account.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Pod:
    """The few fields of a pod the integration reads."""

    namespace: str
    name: str
    uid: str
    node: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    phase: str = "Pending"
    deletion_timestamp: str | None = None
    resource_version: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def active(self) -> bool:
        """Still entitled to its connections: not being deleted and not finished."""
        return self.deletion_timestamp is None and self.phase not in TERMINAL_PHASES


@dataclass(frozen=True)
class PodEvent:
    type: EventType
    pod: Pod


Handler = Callable[[PodEvent], None]


class PodSource:
    """The cache and fan-out every source shares; subclasses feed it through `_upsert`,
    `_remove` and `_replace` from one thread, and implement `start`/`stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, Pod] = {}  # by uid
        self._handlers: list[Handler] = []
        self._synced = threading.Event()

    # -- what consumers use ----------------------------------------------------------------
    def subscribe(self, handler: Handler) -> None:
        """`handler` is called in the source's thread: it must be quick and must not raise."""
        with self._lock:
            self._handlers.append(handler)

    def unsubscribe(self, handler: Handler) -> None:
        with self._lock:
            if handler in self._handlers:
                self._handlers.remove(handler)

    def pods(self) -> list[Pod]:
        with self._lock:
            return list(self._pods.values())

    def get(self, uid: str) -> Pod | None:
        with self._lock:
            return self._pods.get(uid)

    def has_synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    # -- what sources use ------------------------------------------------------------------
    def _upsert(self, pod: Pod) -> None:
        with self._lock:
            old = self._pods.get(pod.uid)
            if old == pod:
                return
            self._pods[pod.uid] = pod
        self._emit(PodEvent("ADDED" if old is None else "MODIFIED", pod))

    def _remove(self, uid: str, last: Pod | None = None) -> None:
        with self._lock:
            old = self._pods.pop(uid, None)
        pod = old if old is not None else last
        if pod is not None:
            self._emit(PodEvent("DELETED", pod))

    def _replace(self, pods: Iterable[Pod]) -> None:
        """A complete list: what is missing from it was deleted while nobody watched."""
        fresh = {p.uid: p for p in pods}
        with self._lock:
            gone = [p for uid, p in self._pods.items() if uid not in fresh]
        for pod in gone:
            self._remove(pod.uid)
        for pod in fresh.values():
            self._upsert(pod)
        self._synced.set()

    def _emit(self, event: PodEvent) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                handler(event)
            except Exception as e:  # a subscriber's bug must not stop the feed
                log.error("pod event handler failed on %s %s: %s", event.type, event.pod.key, e)


class FakePodSource(PodSource):
    """An in-memory API server for tests and the lab; changes reach subscribers at once, in
    the caller's thread.

    It holds every pod it is given; with `node` set it passes on only that node's pods, like the
    real source's field selector. With `synced=False` nothing is delivered until `sync()`, as
    before an informer's first list.
    """

    def __init__(
        self, node: str | None = None, pods: Iterable[Pod] = (), *, synced: bool = True
    ) -> None:
        super().__init__()
        self.node = node
        self._all: dict[str, Pod] = {p.uid: p for p in pods}
        self._listing = synced

    def start(self) -> None:
        if self._listing:
            self.sync()

    def stop(self) -> None:
        pass

    def sync(self) -> None:
        """Deliver a complete list (the first one, or a relist after a lost watch)."""
        self._listing = True
        self._replace(p for p in list(self._all.values()) if self._selected(p))

    def add(self, pod: Pod) -> None:
        self._all[pod.uid] = pod
        if self._listing and self._selected(pod):
            self._upsert(pod)

    def modify(self, pod: Pod) -> None:
        self.add(pod)

    def delete(self, pod: Pod | str) -> None:
        uid = pod if isinstance(pod, str) else pod.uid
        self._all.pop(uid, None)
        if self._listing:
            self._remove(uid)

    def _selected(self, pod: Pod) -> bool:
        return self.node is None or pod.node == self.node
