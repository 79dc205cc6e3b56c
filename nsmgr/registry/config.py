"""`nsm-registry`'s config file (YAML; JSON accepted). Only `domain` is required:

domain: example.com                 # this registry's domain: `svc` and `svc@example.com` are local
server: {listen: "0.0.0.0:5002", metrics: "127.0.0.1:9105"}
registration: {default_ttl: 60, max_ttl: 600}     # seconds an endpoint lives unless refreshed
store: {backend: sqlite, path: /var/lib/sriov-nsm/registry.db}
#   or {backend: kubernetes, kubernetes: {namespace: nsm-system}}
dns: {nameservers: [], timeout: 2, attempts: 3}   # []: the system resolver
proxy: {enabled: true, pnsmgr_url: "tcp://10.0.0.9:5004"}

Relative paths are relative to the config file's folder. Errors are one line, `file: field: reason`.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

from nicinventory.config import read_document
from nsmgr.registry import names
from nsmgr.registry.errors import ConfigError, RegistryError
from nsmgr.registry.resolver import parse_nameserver

DEFAULT_STORE = "/var/lib/sriov-nsm/registry.db"
DEFAULT_LISTEN = "0.0.0.0:5002"  # NSM's registry port


class FieldError(ValueError):
    """A cross-check failure that names its own field (a model validator has no location)."""

    def __init__(self, loc: str, reason: str) -> None:
        super().__init__(f"{loc}: {reason}")
        self.loc, self.reason = loc, reason


def _checked(fn: Any, *args: Any) -> Any:
    """A names.* check as pydantic wants it: ValueError, not InvalidName."""
    try:
        return fn(*args)
    except RegistryError as e:
        raise ValueError(str(e)) from None


def host_port(v: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (port 0: any free one) -> (host, port); ValueError otherwise."""
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{v!r} is not host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            _checked(names.check_domain, host, "host")
    return host, int(port)


def check_listen(v: str) -> str:
    """A gRPC listen address: `unix:///path` (≤ 107 bytes) or host:port."""
    if v.startswith("unix://"):
        path = v.removeprefix("unix://")
        if not path.startswith("/") or len(path.encode()) > 107:
            raise ValueError("unix:// needs an absolute socket path of at most 107 bytes")
        return v
    host_port(v)
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    listen: str = DEFAULT_LISTEN  # gRPC: host:port or unix:///path
    metrics: str = "127.0.0.1:9105"  # /metrics, /readyz, /healthz; "" turns it off
    max_workers: int = Field(default=64, ge=4, le=1024)  # each open watch holds one

    @pydantic.field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return check_listen(v)

    @pydantic.field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str) -> str:
        if v:
            host_port(v)
        return v


class RegistrationConfig(_Model):
    default_ttl: float = Field(default=60.0, gt=0)  # when a Register gives no expiration_time
    max_ttl: float = Field(default=600.0, gt=0)  # a later expiration_time is cut to this

    @pydantic.model_validator(mode="after")
    def _order(self) -> RegistrationConfig:
        if self.default_ttl > self.max_ttl:
            raise FieldError("default_ttl", f"exceeds max_ttl ({self.max_ttl:g} s)")
        return self


class KubernetesConfig(_Model):
    namespace: str = "nsm-system"
    kubeconfig: str | None = None  # None: the in-cluster service account
    timeout: float = Field(default=10.0, gt=0)

    @pydantic.field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if "." in v:
            raise ValueError(f"invalid namespace {v!r}: a single DNS label")
        return _checked(names.check_name, v, "namespace")

    @pydantic.field_validator("kubeconfig")
    @classmethod
    def _kubeconfig(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _path(v, info)


class StoreConfig(_Model):
    backend: Literal["sqlite", "kubernetes"] = "sqlite"
    path: str = DEFAULT_STORE  # the SQLite file (":memory:" for throw-away runs)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)

    @pydantic.field_validator("path")
    @classmethod
    def _path(cls, v: str, info: ValidationInfo) -> str:
        return v if v == ":memory:" else _path(v, info)


class DnsConfig(_Model):
    nameservers: list[str] = Field(default_factory=list)  # ip or ip:port; []: /etc/resolv.conf
    timeout: float = Field(default=2.0, gt=0)  # per attempt
    attempts: int = Field(default=3, ge=1, le=10)
    backoff: float = Field(default=0.1, ge=0)  # before the 2nd attempt; doubled each time
    min_ttl: float = Field(default=1.0, ge=0)
    max_ttl: float = Field(default=300.0, gt=0)
    negative_ttl: float = Field(default=30.0, ge=0)  # NXDOMAIN, no such record
    serve_stale: float = Field(default=300.0, ge=0)  # an expired answer, if DNS then fails

    @pydantic.field_validator("nameservers")
    @classmethod
    def _nameservers(cls, v: list[str]) -> list[str]:
        for i, ns in enumerate(v):
            try:
                parse_nameserver(ns)
            except ValueError:
                raise FieldError(str(i), f"{ns!r} is not ip, ip:port or [ipv6]:port") from None
        return v

    @pydantic.model_validator(mode="after")
    def _order(self) -> DnsConfig:
        if self.min_ttl > self.max_ttl:
            raise FieldError("min_ttl", f"exceeds max_ttl ({self.max_ttl:g} s)")
        return self


class ProxyConfig(_Model):
    enabled: bool = True  # Find for name@other-domain is forwarded there
    pnsmgr_url: str = ""  # what remote endpoints' url becomes; "": keep the remote url
    timeout: float = Field(default=5.0, gt=0)  # a forwarded Find without watch

    @pydantic.field_validator("pnsmgr_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return v and _checked(names.check_url, v, "pnsmgr_url")


class RegistryConfig(_Model):
    domain: str
    server: ServerConfig = Field(default_factory=ServerConfig)
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)

    @pydantic.field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return _checked(names.check_domain, v)


def _path(value: str, info: ValidationInfo) -> str:
    """Relative to the config file's folder (context `base`), else to cwd."""
    if not value or "\0" in value:
        raise ValueError("invalid path")
    base = (info.context or {}).get("base") or os.getcwd()
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


# -- loading --------------------------------------------------------------------------------------


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
    if err["type"] == "missing":
        return loc, "required"
    return loc or "(top level)", err["msg"]


def parse_config(data: Any, source: str = "<config>", base: str | None = None) -> RegistryConfig:
    """A config from data already read; ConfigError `source: field: reason`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): a mapping of settings is needed")
    try:
        return RegistryConfig.model_validate(data, context={"base": base or os.getcwd()})
    except pydantic.ValidationError as e:
        loc, reason = _first_error(e)
        raise ConfigError(f"{source}: {loc}: {_one_line(reason)}") from None


def load_config(path: str) -> RegistryConfig:
    """The config in `path`, validated; ConfigError `file: field: reason`."""
    data = read_document(path, ConfigError)
    return parse_config(data, path, os.path.dirname(os.path.abspath(path)))
