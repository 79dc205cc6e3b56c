"""What `nsm-lab demo` runs: pods and network services from a YAML file that reads like Kubernetes
manifests (pure: parsing and the expected ping matrix; no I/O except reading the file).

    apiVersion: v1
    kind: Pod
    metadata:
      name: web-1
      namespace: default
      annotations: {ns.networkservicemesh.io: myns.example.com}
    spec:
      containers:
      - name: app
        resources: {limits: {example.com/100g: 1}}

A file may also declare the lab's network services, as NSM's `NetworkService` objects with the
TOR shim's fields in `spec` (without them the lab's two default services are used):

    apiVersion: networkservicemesh.io/v1
    kind: NetworkService
    metadata: {name: myns.example.com}
    spec: {vlan: 100, subnet: 10.60.1.0/24, mtu: 1500, namespaces: ["*"]}

The annotation is parsed by nsmgr's own parser, so whatever nsmgr accepts the lab accepts. Every
lab service routes the lab supernet on-link: a pod of one service could reach a pod of another if
the TOR leaked VLANs, so an unreachable pair proves isolation, not a missing route.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from nsmgr.pods.annotations import KEYS, SEED_KEY, is_annotated, parse_annotations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCENARIO = os.path.join(REPO, "configs", "lab-pods.yaml")
SUPERNET = ipaddress.ip_network("10.60.0.0/16")  # every lab service's subnet lies inside
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label: pod and namespace
SERVICE_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)
RESOURCE_RE = re.compile(
    r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?/[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$"
)
MAX_PODS = 32


class ScenarioError(ValueError):
    """A bad scenario file; the message is one line naming the document and field."""


@dataclass(frozen=True)
class LabService:
    name: str
    vlan: int
    subnet: str
    mtu: int = 1500
    namespaces: tuple[str, ...] = ("*",)

    def torshim(self) -> dict[str, Any]:
        """This service as a `services:` entry of the TOR shim's config."""
        return {
            "name": self.name,
            "domain": self.name.split(".", 1)[1] if "." in self.name else self.name,
            "vlan": self.vlan,
            "mtu": self.mtu,
            "subnet": self.subnet,
            "routes": [{"prefix": str(SUPERNET)}],
            "namespaces": list(self.namespaces),
        }


DEFAULT_SERVICES = (
    LabService("myns.example.com", 100, "10.60.1.0/24"),
    LabService("other.example.com", 200, "10.60.2.0/24"),
)


@dataclass(frozen=True)
class LabPod:
    name: str
    namespace: str
    services: tuple[tuple[str, str], ...]  # (service, interface name in the pod)
    resources: dict[str, int]  # extended resources asked for, summed over containers
    manifest: dict[str, Any] = field(repr=False, compare=False)  # the Pod object to create

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Scenario:
    source: str
    services: tuple[LabService, ...]
    pods: tuple[LabPod, ...]

    def service(self, name: str) -> LabService | None:
        base = name.partition("@")[0]
        return next((s for s in self.services if s.name == base), None)


def _where(i: int, doc: Any) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"document {i + 1}" + (f" ({name})" if isinstance(name, str) else "")


def _service(i: int, doc: dict[str, Any]) -> LabService:
    where = _where(i, doc)
    name = str((doc.get("metadata") or {}).get("name", ""))
    if not SERVICE_RE.match(name):
        raise ScenarioError(f"{where}: metadata.name {name!r} is not a service name")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ScenarioError(f"{where}: spec must be a mapping")
    extra = set(spec) - {"vlan", "subnet", "mtu", "namespaces", "payload"}
    if extra:
        raise ScenarioError(f"{where}: spec.{sorted(extra)[0]}: unknown field")
    vlan = spec.get("vlan")
    if isinstance(vlan, bool) or not isinstance(vlan, int) or not 2 <= vlan <= 4094:
        raise ScenarioError(f"{where}: spec.vlan must be a VLAN ID in 2..4094")
    try:
        subnet = ipaddress.ip_network(str(spec.get("subnet")), strict=True)
    except ValueError:
        raise ScenarioError(
            f"{where}: spec.subnet {spec.get('subnet')!r} is not a network"
        ) from None
    if not (subnet.version == 4 and subnet.subnet_of(SUPERNET)):  # type: ignore[arg-type]
        raise ScenarioError(f"{where}: spec.subnet must lie inside the lab's {SUPERNET}")
    mtu = spec.get("mtu", 1500)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 9216:
        raise ScenarioError(f"{where}: spec.mtu must be in 576..9216")
    ns = spec.get("namespaces", ["*"])
    if not isinstance(ns, list) or not all(n == "*" or NAME_RE.match(str(n)) for n in ns):
        raise ScenarioError(f"{where}: spec.namespaces must be a list of namespaces or '*'")
    return LabService(name, vlan, str(subnet), mtu, tuple(str(n) for n in ns))


def _pod(i: int, doc: dict[str, Any]) -> LabPod:
    where = _where(i, doc)
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise ScenarioError(f"{where}: metadata must be a mapping")
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace") or "default")
    for what, value in (("name", name), ("namespace", namespace)):
        if not NAME_RE.match(value):
            raise ScenarioError(f"{where}: metadata.{what} {value!r} is not a DNS label")
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not is_annotated({str(k): "" for k in annotations}):
        raise ScenarioError(
            f"{where}: metadata.annotations needs {SEED_KEY}: <service> (or {KEYS[1]})"
        )
    try:
        wanted = parse_annotations({str(k): str(v) for k, v in annotations.items()})
    except ValueError as e:
        raise ScenarioError(f"{where}: {' '.join(str(e).split())}") from None
    spec = doc.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers:
        raise ScenarioError(f"{where}: spec.containers must be a non-empty list")
    resources: dict[str, int] = {}
    for c, container in enumerate(containers):
        if not isinstance(container, dict):
            raise ScenarioError(f"{where}: spec.containers.{c} must be a mapping")
        limits = (container.get("resources") or {}).get("limits") or {}
        if not isinstance(limits, dict):
            raise ScenarioError(f"{where}: spec.containers.{c}.resources.limits must be a mapping")
        for res, count in limits.items():
            if not RESOURCE_RE.match(str(res)):
                continue  # cpu, memory: the kubelet stand-in ignores them, as the lab does
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ScenarioError(
                    f"{where}: spec.containers.{c}.resources.limits.{res}: a count >= 1"
                )
            resources[str(res)] = resources.get(str(res), 0) + count
    if not resources:
        raise ScenarioError(f"{where}: no extended resource (such as example.com/100g: 1) asked")
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**meta, "name": name, "namespace": namespace},
        "spec": spec,
    }
    services = tuple((str(w.service), w.ifname) for w in wanted)
    return LabPod(name, namespace, services, resources, manifest)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ScenarioError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    services: list[LabService] = []
    pods: list[LabPod] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ScenarioError(f"{source}: document {i + 1}: a Kubernetes object is expected")
        kind = doc.get("kind")
        try:
            if kind == "Pod":
                pods.append(_pod(i, doc))
            elif kind == "NetworkService":
                services.append(_service(i, doc))
            else:
                raise ScenarioError(f"{_where(i, doc)}: kind {kind!r} (Pod or NetworkService)")
        except ScenarioError as e:
            raise ScenarioError(f"{source}: {e}") from None
    if not pods:
        raise ScenarioError(f"{source}: no Pod")
    if len(pods) > MAX_PODS:
        raise ScenarioError(f"{source}: {len(pods)} pods; the lab runs at most {MAX_PODS}")
    seen: set[str] = set()
    for p in pods:
        if p.key in seen:
            raise ScenarioError(f"{source}: pod {p.key} appears twice")
        seen.add(p.key)
    chosen = tuple(services) or DEFAULT_SERVICES
    _check_services(chosen, source)
    scn = Scenario(source, chosen, tuple(pods))
    for p in pods:
        for svc, _ in p.services:
            if scn.service(svc) is None:
                known = ", ".join(s.name for s in chosen)
                raise ScenarioError(f"{source}: pod {p.key}: no service {svc!r} (known: {known})")
    return scn


def _check_services(services: tuple[LabService, ...], source: str) -> None:
    for a in range(len(services)):
        for b in range(a + 1, len(services)):
            s, t = services[a], services[b]
            if s.name == t.name or s.vlan == t.vlan:
                raise ScenarioError(
                    f"{source}: services {s.name} and {t.name} share a name or VLAN"
                )
            if ipaddress.ip_network(s.subnet).overlaps(ipaddress.ip_network(t.subnet)):
                raise ScenarioError(f"{source}: services {s.name} and {t.name} overlap")


def load_scenario(path: str | None = None) -> Scenario:
    """The scenario in `path`, or the default one in configs/."""
    path = path or DEFAULT_SCENARIO
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ScenarioError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path}: not UTF-8 text") from None
    return parse_scenario(text, path)


def expected_reachable(a: LabPod, b: LabPod, service: str) -> bool:
    """Should pod `a` reach pod `b`'s address on `service`? Only if `a` is on that service too."""
    base = service.partition("@")[0]
    return a.key != b.key and any(s.partition("@")[0] == base for s, _ in a.services)
