"""Fakes for the Kubernetes backend.

- `FakeCrds`: a CrdAdapter with the API server's semantics for our resources: resourceVersion bumped
  on every write, create of an existing name and replace or delete with a stale version are
  Conflict, objects handed out as copies (a caller mutating one changes nothing stored).
  `meddle(plural, name)` plays another writer: the next write of that object finds its version moved.
- `FakeCustomObjectsApi`: stands in for kubernetes' CustomObjectsApi under the real KubeAdapter,
  recording calls and raising `ApiException` with the status a test asks for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from nsmgr.registry.errors import Conflict


class FakeCrds:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.version = 0
        self.writes = 0
        self._meddle: list[tuple[str, str]] = []

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    def meddle(self, plural: str, name: str) -> None:
        """Before the next write to plural/name, someone else updates it (its version moves)."""
        self._meddle.append((plural, name))

    def _maybe_meddle(self, plural: str, name: str) -> None:
        if (plural, name) in self._meddle:
            self._meddle.remove((plural, name))
            stored = self.objects.get(plural, {}).get(name)
            if stored is not None:
                stored["metadata"]["resourceVersion"] = self._bump()

    def list(self, plural: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.get(plural, {}).values()]

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get(plural, {}).get(name)
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._maybe_meddle(plural, name)
        store = self.objects.setdefault(plural, {})
        if name in store:
            raise Conflict(f"{plural}/{name} already exists")
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = self._bump()
        store[name] = obj
        self.writes += 1
        return copy.deepcopy(obj)

    def replace(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._maybe_meddle(plural, name)
        stored = self.objects.get(plural, {}).get(name)
        if stored is None:
            raise Conflict(f"{plural}/{name} is gone")
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise Conflict(f"{plural}/{name}: resourceVersion moved")
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = self._bump()
        self.objects[plural][name] = obj
        self.writes += 1
        return copy.deepcopy(obj)

    def delete(self, plural: str, name: str, resource_version: str | None = None) -> bool:
        self._maybe_meddle(plural, name)
        stored = self.objects.get(plural, {}).get(name)
        if stored is None:
            return False
        if resource_version and resource_version != stored["metadata"]["resourceVersion"]:
            raise Conflict(f"{plural}/{name}: resourceVersion moved")
        del self.objects[plural][name]
        self.writes += 1
        return True


class FakeCustomObjectsApi:
    """Records each call as (method, args, kwargs); `fail[method]` = HTTP status to raise."""

    def __init__(self, answer: Callable[[str, tuple[Any, ...]], Any] | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail: dict[str, int] = {}
        self.answer = answer or (lambda method, args: {"items": []} if "list" in method else {})

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if not method.endswith("_namespaced_custom_object"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, args, kwargs))
            if method in self.fail:
                raise ApiException(status=self.fail[method], reason="Faked")
            return self.answer(method, args)

        return call
