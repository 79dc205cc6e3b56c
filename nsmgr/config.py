"""nsmgr's config file (YAML; JSON accepted). Every host path is here, so tests and the lab point
the agent at their own trees and namespaces.

node_name: node-a                      # default: this host's name
state_dir: /var/lib/sriov-nsm/nsmgr    # the journal (one record per VF) and its locks
socket: /var/lib/networkservicemesh/nsm.io.sock
sysfs_root: /sys
node_netns: null                       # a namespace path: the "host" side of every VF (the lab's node)
pf_side: netlink                       # netlink: IFLA_VF_* through the PF; none: never touch the PF
services:                              # served by nsmgr itself until the registry/TOR shim answer
  - {name: myns.example.com, vlan: 100, mtu: 9000, subnet: 10.100.0.0/24,
     routes: [{prefix: 10.200.0.0/16, via: 10.100.0.1}], allowed_namespaces: [myns]}
metrics: {address: 0.0.0.0, port: 9102}   # /metrics, /readyz, /healthz; port 0: off
pods: {podresources_socket: ..., cri_socket: ...}   # watch this node's pods (nsmgr/pods/config.py)

Relative paths are relative to the config file's folder. Errors are one line, `file: field: reason`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

from nicinventory.config import read_document
from nsmgr.errors import ConfigError
from nsmgr.model import ServiceRef
from nsmgr.pods.config import PodsConfig

DEFAULT_CONFIG = "/etc/sriov-nsm/nsmgr.yaml"
DEFAULT_STATE_DIR = "/var/lib/sriov-nsm/nsmgr"
DEFAULT_SOCKET = "/var/lib/networkservicemesh/nsm.io.sock"
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its NUL
_NODE_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FieldError(ValueError):
    """A cross-check that names its own field (a model validator has no location of its own)."""

    def __init__(self, loc: str, reason: str) -> None:
        super().__init__(f"{loc}: {reason}")
        self.loc, self.reason = loc, reason


def _path(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    if not value or "\0" in value:
        raise ValueError("invalid path")
    base = (info.context or {}).get("base") or os.getcwd()
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _network(v: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(v), strict=True)
    except ValueError as e:
        raise ValueError(f"invalid network {v!r}: {e}") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RouteConfig(_Model):
    prefix: str
    via: str | None = None  # None: on-link

    @pydantic.field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return str(_network(v))

    @pydantic.field_validator("via")
    @classmethod
    def _via(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"invalid IP address {v!r}") from None


class DnsConfig(_Model):
    servers: list[str] = Field(default_factory=list)
    search: list[str] = Field(default_factory=list)

    @pydantic.field_validator("servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        out = []
        for s in v:
            try:
                out.append(str(ipaddress.ip_address(s)))
            except ValueError:
                raise ValueError(f"invalid IP address {s!r}") from None
        return out

    @pydantic.field_validator("search")
    @classmethod
    def _search(cls, v: list[str]) -> list[str]:
        for d in v:
            if not _DOMAIN_RE.match(d):
                raise ValueError(f"invalid search domain {d!r}")
        return v


class VfConfig(_Model):
    """PF-side settings of the service's VFs (IFLA_VF_*); unset ones are left as they are."""

    spoofchk: bool | None = None
    trust: bool | None = None
    min_tx_rate: int | None = Field(default=None, ge=0)  # Mbit/s
    max_tx_rate: int | None = Field(default=None, ge=0)
    link_state: Literal["auto", "enable", "disable"] | None = None


class LocalService(_Model):
    name: str
    domain: str = ""  # "": answers `name` and `name@<any domain>`
    vlan: int = Field(default=0, ge=0, le=4094)  # 0: untagged (no PF-side VLAN)
    vlan_qos: int = Field(default=0, ge=0, le=7)
    vlan_proto: Literal["802.1Q", "802.1ad"] = "802.1Q"
    mtu: int | None = Field(default=None, ge=68, le=9216)  # None: the VF's as it is
    subnet: str | None = None  # addresses leased per connection; None: no address
    routes: list[RouteConfig] = Field(default_factory=list)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    allowed_namespaces: list[str] = Field(default_factory=lambda: ["*"])  # "*": everyone
    mac: Literal["keep", "assign"] = "keep"  # assign: a locally administered MAC per connection
    vf: VfConfig = Field(default_factory=VfConfig)

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        ref = ServiceRef.parse(v)  # RequestError is a ValueError: pydantic reports it
        if ref.domain:
            raise ValueError("give the domain in `domain`, not after '@'")
        return v

    @pydantic.field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if v and not _DOMAIN_RE.match(v):
            raise ValueError(f"invalid domain {v!r}")
        return v

    @pydantic.field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str | None) -> str | None:
        return None if v is None else str(_network(v))

    @pydantic.field_validator("allowed_namespaces")
    @classmethod
    def _namespaces(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError('give at least one namespace, or "*" for all')
        for ns in v:
            if ns != "*" and not _NAMESPACE_RE.match(ns):
                raise ValueError(f"invalid namespace {ns!r}")
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> LocalService:
        subnet = _network(self.subnet) if self.subnet else None
        if subnet is not None and subnet.num_addresses < 2:
            raise FieldError("subnet", f"{subnet} is a single address: nothing to lease")
        if subnet is not None and subnet.version == 6 and self.mtu is not None and self.mtu < 1280:
            raise FieldError("mtu", "IPv6 needs at least 1280")
        for i, r in enumerate(self.routes):
            if r.via is None:
                continue
            if subnet is None:
                raise FieldError(f"routes.{i}.via", "a gateway needs the service's subnet")
            if ipaddress.ip_address(r.via) not in subnet:
                raise FieldError(f"routes.{i}.via", f"{r.via} is not in {subnet}")
        if self.vlan == 0 and (self.vlan_qos or self.vlan_proto != "802.1Q"):
            raise FieldError("vlan_qos", "QoS and protocol apply to a VLAN: set vlan too")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.domain}" if self.domain else self.name

    def answers(self, ref: ServiceRef) -> bool:
        return ref.name == self.name and (
            not ref.domain or not self.domain or ref.domain == self.domain
        )

    def allows(self, namespace: str | None) -> bool:
        return "*" in self.allowed_namespaces or namespace in self.allowed_namespaces


class RegistryClientConfig(_Model):
    """The Network Service Registry of this node's domain: services not declared in `services`
    are found there (`url` empty: local services only)."""

    url: str = ""  # tcp://host:port or unix:///path
    timeout: float = Field(default=10.0, gt=0)  # seconds per Find, Request, Close
    # nicinventory's config (its `lldp` and `tor_map`): the PF's TOR port is sent with each
    # Request (torSwitch/torPort), for shims whose port map does not know the PF
    nicinventory_config: str | None = None
    refresh_period: float = Field(default=60.0, gt=0)  # re-Request live remote connections

    @pydantic.field_validator("nicinventory_config")
    @classmethod
    def _inventory(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _path(v, info)

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not (v.startswith("unix:///") or re.match(r"^tcp://[^/\s]+:[0-9]{1,5}$", v)):
            raise ValueError(f"{v!r} is neither tcp://host:port nor unix:///path")
        return v


class MetricsConfig(_Model):
    address: str = "0.0.0.0"
    port: int = Field(default=9102, ge=0, le=65535)  # 0: off


class NsmgrConfig(_Model):
    # $NODE_NAME (the downward API in the DaemonSet), else the hostname
    node_name: str = Field(
        default_factory=lambda: os.environ.get("NODE_NAME") or socket.gethostname().lower()
    )
    state_dir: str = DEFAULT_STATE_DIR
    socket: str = DEFAULT_SOCKET
    sysfs_root: str = "/sys"
    node_netns: str | None = None
    pf_side: Literal["netlink", "none"] = "netlink"
    workers: int = Field(default=32, ge=1, le=256)  # requests handled at once
    reconcile_period: float = Field(default=60.0, gt=0)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    registry: RegistryClientConfig = Field(default_factory=RegistryClientConfig)
    services: list[LocalService] = Field(default_factory=list)
    pods: PodsConfig | None = None  # the pod integration; absent: requests come by hand/gRPC only

    @pydantic.model_validator(mode="before")
    @classmethod
    def _pods_node(cls, data: Any) -> Any:
        """The pod integration watches this node: its node_name defaults to the agent's."""
        if isinstance(data, dict) and isinstance(data.get("pods"), dict):
            pods = data["pods"]
            if "node_name" not in pods:
                node = data.get("node_name") or os.environ.get("NODE_NAME") or socket.gethostname()
                data = {**data, "pods": {**pods, "node_name": str(node).lower()}}
        return data

    @pydantic.field_validator("node_name")
    @classmethod
    def _node(cls, v: str) -> str:
        if not _NODE_RE.match(v):
            raise ValueError(f"invalid node name {v!r} (a Kubernetes node name)")
        return v

    @pydantic.field_validator("state_dir", "sysfs_root", "node_netns")
    @classmethod
    def _paths(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _path(v, info)

    @pydantic.field_validator("socket")
    @classmethod
    def _socket(cls, v: str, info: ValidationInfo) -> str:
        path = str(_path(v, info))
        if len(path.encode()) > MAX_UNIX_PATH:
            raise ValueError(f"{len(path.encode())} bytes: a unix socket path has at most 107")
        return path

    @pydantic.model_validator(mode="after")
    def _unique(self) -> NsmgrConfig:
        seen: dict[tuple[str, str], int] = {}
        for i, s in enumerate(self.services):
            if (s.name, s.domain) in seen:
                first = seen[s.name, s.domain]
                raise FieldError(f"services.{i}.name", f"{s.ref} is already services.{first}")
            seen[s.name, s.domain] = i
        return self


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _first_error(e: pydantic.ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return (f"{loc}.{cause.loc}" if loc else cause.loc), cause.reason
    if isinstance(cause, ValueError):
        return loc or "(top level)", str(cause)
    return loc or "(top level)", err["msg"]


def parse_config(data: Any, source: str = "<config>", base: str | None = None) -> NsmgrConfig:
    """A config from already-loaded data (tests, the lab); errors as load_config's."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of settings")
    try:
        return NsmgrConfig.model_validate(data, context={"base": base or os.getcwd()})
    except pydantic.ValidationError as e:
        loc, reason = _first_error(e)
        raise ConfigError(f"{source}: {loc}: {_one_line(reason)}") from None


def load_config(path: str) -> NsmgrConfig:
    """The config in `path`, validated; ConfigError `file: field: reason`."""
    data = read_document(path, ConfigError)
    return parse_config(data or {}, path, os.path.dirname(os.path.abspath(path)))
