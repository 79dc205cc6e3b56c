"""The Kubernetes backend: registrations as custom resources of ours (deploy/crds/).

`NetworkService` and `NetworkServiceEndpoint` objects, group `nsm.sriov-nsm.io`, version `v1`,
namespaced (the registry's namespace), named after the registration (names are DNS-1123
subdomains, so they are valid object names as they are). Their `spec` is the message in proto3
JSON form (camelCase, RFC 3339 times):

    spec: {networkServiceNames: [...], networkServiceLabels: {svc: {labels: {k: v}}},
           url: tcp://10.0.0.5:5001, expirationTime: "2025-01-01T00:00:00.000000Z",
           initialRegistrationTime: "..."}

`KubeAdapter` is the only code that knows Kubernetes' REST (through the client's
CustomObjectsApi); `CrdBackend` speaks to any `CrdAdapter`, and the tests give it a fake with the
same semantics. Writes are optimistic: read, then replace with the read `resourceVersion`; a
`Conflict` (someone wrote in between) is retried from the read. An expiry sweep deletes with the
read version as precondition, so an endpoint refreshed in between survives.

Watchers hear about changes made through this backend (this registry's own writes); objects
edited with kubectl show up in Find at once but are not pushed to open watches.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any, Protocol

from nsmgr.registry.errors import Conflict, StoreError
from nsmgr.registry.model import Change, Endpoint, EndpointQuery, Service, ServiceQuery
from nsmgr.registry.store import Notifier

GROUP = "nsm.sriov-nsm.io"
VERSION = "v1"
SERVICES = "networkservices"
ENDPOINTS = "networkserviceendpoints"
KINDS = {SERVICES: "NetworkService", ENDPOINTS: "NetworkServiceEndpoint"}
WRITE_ATTEMPTS = 5  # optimistic writes retried after a Conflict


class CrdAdapter(Protocol):
    """Our two custom resources in one namespace. Objects are plain dicts as the API sends them."""

    def list(self, plural: str) -> list[dict[str, Any]]: ...

    def get(self, plural: str, name: str) -> dict[str, Any] | None: ...

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        """Conflict when an object of that name exists."""
        ...

    def replace(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        """Conflict when body's metadata.resourceVersion is not the stored one or it is gone."""
        ...

    def delete(self, plural: str, name: str, resource_version: str | None = None) -> bool:
        """False when there was nothing; Conflict when resource_version is not the stored one."""
        ...


class KubeAdapter:
    """CrdAdapter over the API server (kubernetes' CustomObjectsApi; `api` injectable)."""

    def __init__(
        self,
        namespace: str,
        *,
        api: Any = None,
        kubeconfig: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        if api is None:
            api = _custom_objects_api(kubeconfig)
        self.api = api

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(
                GROUP, VERSION, self.namespace, *args, _request_timeout=self.timeout, **kwargs
            )
        except Exception as e:
            status = getattr(e, "status", None)
            if status == 409:
                raise Conflict(f"{what}: conflict (written meanwhile)") from e
            if status == 404:
                raise _Missing(what) from e
            reason = getattr(e, "reason", None) or str(e)
            detail = f"HTTP {status} {reason}" if status else " ".join(str(reason).split())
            raise StoreError(f"Kubernetes API: {what}: {detail}") from e

    def list(self, plural: str) -> list[dict[str, Any]]:
        doc = self._call(f"list {plural}", self.api.list_namespaced_custom_object, plural)
        return list(doc.get("items") or [])

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call(
                f"get {plural}/{name}", self.api.get_namespaced_custom_object, plural, name
            )
        except _Missing:
            return None

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return self._call(
            f"create {plural}/{name}", self.api.create_namespaced_custom_object, plural, body
        )

    def replace(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        try:
            return self._call(
                f"replace {plural}/{name}",
                self.api.replace_namespaced_custom_object,
                plural,
                name,
                body,
            )
        except _Missing as e:
            raise Conflict(f"replace {plural}/{name}: deleted meanwhile") from e

    def delete(self, plural: str, name: str, resource_version: str | None = None) -> bool:
        body = {"preconditions": {"resourceVersion": resource_version}} if resource_version else {}
        try:
            self._call(
                f"delete {plural}/{name}",
                self.api.delete_namespaced_custom_object,
                plural,
                name,
                body=body,
            )
        except _Missing:
            return False
        return True


class _Missing(StoreError):
    """404, turned into None/False/Conflict by the adapter's methods; never leaves this module."""


def _custom_objects_api(kubeconfig: str | None) -> Any:
    """In-cluster config when running in a pod, else the kubeconfig (imported only for this)."""
    from kubernetes import client, config

    try:
        if kubeconfig is None:
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=kubeconfig)
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig)
        except (config.ConfigException, OSError) as e:
            raise StoreError(f"Kubernetes API: no in-cluster config and no kubeconfig: {e}") from e
    return client.CustomObjectsApi()


# -- objects <-> records --------------------------------------------------------------------------


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)


def rfc3339(t: float) -> str:
    """In whole microseconds, rounded as model.to_timestamp rounds: the same instant either way."""
    return (_EPOCH + round(t * 1e6) * _US).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_rfc3339(text: str) -> float:
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ((when - _EPOCH) // _US) / 1e6


def _object(plural: str, name: str, spec: dict[str, Any], version: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if version is not None:
        meta["resourceVersion"] = version
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KINDS[plural],
        "metadata": meta,
        "spec": spec,
    }


def service_spec(s: Service) -> dict[str, Any]:
    return {"payload": s.payload, "matches": list(s.matches)}


def service_of(obj: dict[str, Any]) -> Service:
    spec = obj.get("spec") or {}
    matches = tuple(spec.get("matches") or ())
    return Service(obj["metadata"]["name"], spec.get("payload") or "", matches)


def endpoint_spec(e: Endpoint) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "networkServiceNames": list(e.network_service_names),
        "networkServiceLabels": {
            svc: {"labels": dict(labels)} for svc, labels in e.network_service_labels.items()
        },
        "url": e.url,
        "expirationTime": rfc3339(e.expires),
    }
    if e.registered:
        spec["initialRegistrationTime"] = rfc3339(e.registered)
    return spec


def endpoint_of(obj: dict[str, Any]) -> Endpoint:
    spec = obj.get("spec") or {}
    labels = spec.get("networkServiceLabels") or {}
    return Endpoint(
        name=obj["metadata"]["name"],
        network_service_names=tuple(spec.get("networkServiceNames") or ()),
        network_service_labels={k: dict((v or {}).get("labels") or {}) for k, v in labels.items()},
        url=spec.get("url") or "",
        expires=from_rfc3339(spec["expirationTime"]) if spec.get("expirationTime") else 0.0,
        registered=(
            from_rfc3339(spec["initialRegistrationTime"])
            if spec.get("initialRegistrationTime")
            else 0.0
        ),
    )


def _version(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


# -- the backend ----------------------------------------------------------------------------------


class CrdBackend(Notifier):
    """store.Backend over a CrdAdapter."""

    def __init__(self, adapter: CrdAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        self._lock = threading.Lock()  # this process's writes, and their notifications, in order

    def close(self) -> None:
        pass

    def _upsert(
        self, plural: str, name: str, spec_of: Callable[[dict[str, Any] | None], Any]
    ) -> Any:
        """Read, compute the spec from what is there, write; again from the read on Conflict."""
        last: Conflict | None = None
        for _ in range(WRITE_ATTEMPTS):
            current = self.adapter.get(plural, name)
            record, spec = spec_of(current)
            try:
                if current is None:
                    self.adapter.create(plural, _object(plural, name, spec, None))
                else:
                    self.adapter.replace(plural, _object(plural, name, spec, _version(current)))
                return record
            except Conflict as e:
                last = e
        raise StoreError(f"{plural}/{name}: gave up after {WRITE_ATTEMPTS} conflicts: {last}")

    def _delete(self, plural: str, name: str) -> dict[str, Any] | None:
        for _ in range(WRITE_ATTEMPTS):
            current = self.adapter.get(plural, name)
            if current is None:
                return None
            try:
                return current if self.adapter.delete(plural, name, _version(current)) else None
            except Conflict:
                continue
        raise StoreError(f"{plural}/{name}: gave up deleting after {WRITE_ATTEMPTS} conflicts")

    # -- services ---------------------------------------------------------------------------------
    def put_service(self, service: Service) -> Service:
        with self._lock:
            self._upsert(SERVICES, service.name, lambda _cur: (service, service_spec(service)))
            self.notify(Change(service))
        return service

    def delete_service(self, name: str) -> Service | None:
        with self._lock:
            obj = self._delete(SERVICES, name)
            old = None if obj is None else service_of(obj)
            if old is not None:
                self.notify(Change(old, deleted=True))
        return old

    def find_services(self, query: ServiceQuery) -> list[Service]:
        if query.name:
            obj = self.adapter.get(SERVICES, query.name)
            found = [] if obj is None else [service_of(obj)]
        else:
            found = [service_of(o) for o in self.adapter.list(SERVICES)]
        return sorted((s for s in found if query.matches(s)), key=lambda s: s.name)

    # -- endpoints --------------------------------------------------------------------------------
    def put_endpoint(self, endpoint: Endpoint, now: float) -> Endpoint:
        def spec_of(current: dict[str, Any] | None) -> tuple[Endpoint, dict[str, Any]]:
            registered = endpoint.registered
            if current is not None:
                old = endpoint_of(current)
                if old.live(now):
                    registered = old.registered
            stored = Endpoint(
                endpoint.name,
                tuple(dict.fromkeys(endpoint.network_service_names)),
                {k: dict(v) for k, v in endpoint.network_service_labels.items()},
                endpoint.url,
                endpoint.expires,
                registered,
            )
            return stored, endpoint_spec(stored)

        with self._lock:
            stored = self._upsert(ENDPOINTS, endpoint.name, spec_of)
            self.notify(Change(stored))
        return stored

    def delete_endpoint(self, name: str) -> Endpoint | None:
        with self._lock:
            obj = self._delete(ENDPOINTS, name)
            old = None if obj is None else endpoint_of(obj)
            if old is not None:
                self.notify(Change(old, deleted=True))
        return old

    def _endpoints(self) -> list[Endpoint]:
        return [endpoint_of(o) for o in self.adapter.list(ENDPOINTS)]

    def find_endpoints(self, query: EndpointQuery, now: float) -> list[Endpoint]:
        if query.name:
            obj = self.adapter.get(ENDPOINTS, query.name)
            found = [] if obj is None else [endpoint_of(obj)]
        else:
            found = self._endpoints()
        return sorted((e for e in found if e.live(now) and query.matches(e)), key=lambda e: e.name)

    def expire(self, now: float) -> list[Endpoint]:
        gone: list[Endpoint] = []
        with self._lock:
            for obj in self.adapter.list(ENDPOINTS):
                e = endpoint_of(obj)
                if e.live(now):
                    continue
                try:
                    deleted = self.adapter.delete(ENDPOINTS, e.name, _version(obj))
                except Conflict:
                    continue  # refreshed since we listed it: it lives on
                if deleted:
                    gone.append(e)
                    self.notify(Change(e, deleted=True))
        return gone

    def next_expiry(self) -> float | None:
        return min((e.expires for e in self._endpoints()), default=None)

    def counts(self, now: float) -> tuple[int, int]:
        live = sum(1 for e in self._endpoints() if e.live(now))
        return len(self.adapter.list(SERVICES)), live
