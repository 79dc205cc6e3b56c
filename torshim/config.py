"""The shim's config file (YAML; JSON accepted): switches, the port map, services, guard rails, store.

switches:
  - {name: tor-a, driver: openconfig, host: 192.0.2.11, username: nsm,
     password_file: secrets/tor-a.password}          # secrets only ever come from files
port_map:
  - {node: node-a, pf: ens1f0, switch: tor-a, port: Ethernet1/1}   # pf: ifname or PCI address
  - {node: node-a, pf: ens1f0, vf: "0000:3b:01.0", switch: tor-a, port: Ethernet1/9}  # own port
services:
  - {name: myns.example.com, domain: example.com, vlan: 100, subnet: 10.100.0.0/24,
     namespaces: [myns]}
guard_rails: {allowed_vlans: "100-199,300", protected_ports: {tor-a: [Ethernet1/49]}}
store: {path: /var/lib/sriov-nsm/torshim.db}

Relative paths (secret files, known_hosts, the store) are relative to the config file's folder.
Errors are one line, `file: field: reason`. Secret files are checked when the config is loaded and
read again each time `switch_params()` is called (a rotated Kubernetes Secret is picked up); their
content is never kept in the model, so no repr, dump or log of the config can show it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NamedTuple, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo

from torshim import validate
from torshim.drivers.base import SwitchParams, driver_class, driver_names
from torshim.errors import ConfigError, NotFoundError, ShimError

DEFAULT_STORE = "/var/lib/sriov-nsm/torshim.db"
DEFAULT_PORTS = {"netconf": 830, "cli": 22}
PCI_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")
NODE_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")  # a Kubernetes node name
NAMESPACE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a Kubernetes namespace
USERNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$")
INLINE_SECRET_RE = re.compile(r"pass(word|phrase)|secret", re.IGNORECASE)
T = TypeVar("T")


class FieldError(ValueError):
    """A cross-check failure that names its own field (a model validator has no location)."""

    def __init__(self, loc: str, reason: str) -> None:
        super().__init__(f"{loc}: {reason}")
        self.loc, self.reason = loc, reason


def _checked(fn: Callable[..., T], *args: Any) -> T:
    """A torshim.validate check as pydantic wants it: ValueError, not ShimError."""
    try:
        return fn(*args)
    except ShimError as e:
        raise ValueError(str(e)) from None


def _match(regex: re.Pattern[str], value: str, what: str) -> str:
    if not regex.match(value):
        raise ValueError(f"invalid {what} {value!r}")
    return value


def _path(value: str | None, info: ValidationInfo) -> str | None:
    """Relative paths are relative to the config file's folder (context `base`), else to cwd."""
    if value is None:
        return None
    if not value or "\0" in value:
        raise ValueError("invalid path")
    base = (info.context or {}).get("base") or os.getcwd()
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def read_secret(path: str) -> str:
    """A secret file's content without its trailing newline; OSError/ValueError never show it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def normalise_pf(pf: str) -> str:
    """A PF reference as the port map stores it: a PCI address in full lower case, or an ifname."""
    m = PCI_RE.match(pf)
    if m:
        return f"{(m.group(1) or '0000').lower()}:{m.group(2)}:{m.group(3)}.{m.group(4)}".lower()
    return _checked(validate.linux_ifname, pf)


def vlan_ranges(vlans: frozenset[int]) -> str:
    """{100, 101, 102, 300} -> "100-102,300" (the inverse of validate.parse_vlan_list)."""
    out: list[str] = []
    for v in sorted(vlans):
        if out and v == int(out[-1].rsplit("-", 1)[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ",".join(out)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- switches -------------------------------------------------------------------------------------


class SwitchConfig(_Model):
    name: str
    driver: str
    host: str
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 830 for NETCONF, 22 for CLI
    username: str
    password_file: str | None = None
    key_file: str | None = None
    host_key_checking: bool = True
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts
    connect_timeout: float = Field(default=10.0, gt=0)
    command_timeout: float = Field(default=30.0, gt=0)
    confirm_timeout: int = Field(default=60, gt=0, le=65535)
    max_sessions: int = Field(default=1, ge=1, le=64)
    # A port with no connection left: access in this VLAN (a black hole) if set, else a trunk
    # without VLANs. Set it on OpenConfig switches, where a trunk without trunk-vlans carries all.
    parking_vlan: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # vendor pass-through, given as is

    @pydantic.model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("password", "passphrase", "secret", "key"):
                if key in data:
                    raise FieldError(
                        key, "secrets are read from files: use password_file or key_file"
                    )
        return data

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _checked(validate.name, v, "switch name")

    @pydantic.field_validator("driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        known = driver_names()  # at validation time: whatever drivers are registered now
        if v not in known:
            raise ValueError(f"unknown driver {v!r}; known: {', '.join(known) or '(none)'}")
        return v

    @pydantic.field_validator("parking_vlan", mode="before")
    @classmethod
    def _parking(cls, v: Any) -> int | None:
        return None if v is None else _checked(validate.vlan, v)

    @pydantic.field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            return _match(DOMAIN_RE, v, "host")

    @pydantic.field_validator("username")
    @classmethod
    def _username(cls, v: str) -> str:
        return _match(USERNAME_RE, v, "username")

    @pydantic.field_validator("password_file", "key_file", "known_hosts")
    @classmethod
    def _file(cls, v: str | None, info: ValidationInfo) -> str | None:
        path = _path(v, info)
        if path is not None:
            read_secret(path)  # readable, UTF-8, not empty; the content is dropped here
        return path

    @pydantic.field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if INLINE_SECRET_RE.search(str(key)):
                raise ValueError(f"{key!r}: secrets are read from files, never inline")
        return v

    @pydantic.model_validator(mode="after")
    def _auth(self) -> SwitchConfig:
        if self.password_file is None and self.key_file is None:
            raise FieldError("password_file", "give password_file or key_file")
        if self.confirm_timeout <= self.command_timeout:
            raise FieldError(
                "confirm_timeout",
                f"must exceed command_timeout ({self.command_timeout:g} s), or the switch rolls "
                "back before the shim can confirm",
            )
        return self

    @property
    def transport(self) -> str:
        return driver_class(self.driver).transport

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS.get(self.transport, 22)


# -- port map -------------------------------------------------------------------------------------


class SwitchPort(NamedTuple):
    switch: str
    port: str


class PortMapEntry(_Model):
    """Where a PF is cabled; with `vf`, a VF that has a switch port of its own (the lab's veth VFs,
    a VF cabled through a passive breakout): that port carries the service untagged, in access
    mode, and the VF gets no VLAN tag."""

    node: str
    pf: str  # interface name or PCI address (stored in full, lower case)
    switch: str
    port: str
    vf: str | None = None  # the VF's PCI address

    @pydantic.field_validator("vf")
    @classmethod
    def _vf(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not PCI_RE.match(v):
            raise ValueError(f"invalid VF {v!r} (a PCI address)")
        return normalise_pf(v)

    @pydantic.field_validator("node")
    @classmethod
    def _node(cls, v: str) -> str:
        return _match(NODE_RE, v, "node name")

    @pydantic.field_validator("pf")
    @classmethod
    def _pf(cls, v: str) -> str:
        if not PCI_RE.match(v) and not validate.LINUX_IFNAME_RE.match(v):
            raise ValueError(f"invalid PF {v!r} (an interface name or a PCI address)")
        return normalise_pf(v)

    @pydantic.field_validator("switch")
    @classmethod
    def _switch(cls, v: str) -> str:
        return _checked(validate.name, v, "switch name")

    @pydantic.field_validator("port")
    @classmethod
    def _port(cls, v: str) -> str:
        return _checked(validate.interface, v)


# -- services -------------------------------------------------------------------------------------

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _network(v: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(v), strict=True)
    except ValueError as e:
        raise ValueError(f"invalid network {v!r}: {e}") from None


def _address(v: Any) -> IPAddress:
    try:
        return ipaddress.ip_address(str(v))
    except ValueError:
        raise ValueError(f"invalid IP address {v!r}") from None


class Route(_Model):
    prefix: IPNetwork
    next_hop: IPAddress | None = None  # None: on-link

    @pydantic.field_validator("prefix", mode="before")
    @classmethod
    def _prefix(cls, v: Any) -> IPNetwork:
        return _network(v)

    @pydantic.field_validator("next_hop", mode="before")
    @classmethod
    def _next_hop(cls, v: Any) -> IPAddress | None:
        return None if v is None else _address(v)


class Dns(_Model):
    servers: list[IPAddress] = Field(default_factory=list)
    search: list[str] = Field(default_factory=list)

    @pydantic.field_validator("servers", mode="before")
    @classmethod
    def _servers(cls, v: Any) -> Any:
        return [_address(x) for x in v] if isinstance(v, list) else v

    @pydantic.field_validator("search")
    @classmethod
    def _search(cls, v: list[str]) -> list[str]:
        return [_match(DOMAIN_RE, d, "search domain") for d in v]


class Service(_Model):
    name: str
    domain: str
    vlan: int
    mtu: int = Field(default=1500, ge=68, le=9216)
    subnet: IPNetwork
    routes: list[Route] = Field(default_factory=list)
    dns: Dns = Field(default_factory=Dns)
    namespaces: list[str] = Field(min_length=1)  # Kubernetes namespaces that may use it; "*": all

    @pydantic.field_validator("subnet", mode="before")
    @classmethod
    def _subnet(cls, v: Any) -> IPNetwork:
        return _network(v)

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _checked(validate.name, v, "service name")

    @pydantic.field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return _match(DOMAIN_RE, v, "domain")

    @pydantic.field_validator("vlan", mode="before")
    @classmethod
    def _vlan(cls, v: Any) -> int:
        return _checked(validate.vlan, v)

    @pydantic.field_validator("namespaces")
    @classmethod
    def _namespaces(cls, v: list[str]) -> list[str]:
        return [ns if ns == "*" else _match(NAMESPACE_RE, ns, "namespace") for ns in v]

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Service:
        if self.subnet.num_addresses < 2:
            raise FieldError("subnet", f"{self.subnet} is a single address: nothing to lease")
        if self.subnet.version == 6 and self.mtu < 1280:
            raise FieldError("mtu", "IPv6 needs at least 1280")
        for i, r in enumerate(self.routes):
            if r.next_hop is not None and r.next_hop not in self.subnet:
                raise FieldError(f"routes.{i}.next_hop", f"{r.next_hop} is not in {self.subnet}")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.domain}"

    def allows(self, namespace: str) -> bool:
        return "*" in self.namespaces or namespace in self.namespaces


# -- guard rails, store, the whole --------------------------------------------------------------


class GuardRails(_Model):
    # VLAN 1 is every switch's default VLAN: never a service's unless said so.
    allowed_vlans: frozenset[int] = Field(default=frozenset(range(2, validate.VLAN_MAX + 1)))
    protected_ports: dict[str, list[str]] = Field(default_factory=dict)  # switch -> ports

    @pydantic.field_validator("allowed_vlans", mode="before")
    @classmethod
    def _vlans(cls, v: Any) -> frozenset[int]:
        """`"100-199,300"`, a VLAN ID, or a list of either."""
        out: set[int] = set()
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, str):
                out |= _checked(validate.parse_vlan_list, item)
            else:
                out.add(_checked(validate.vlan, item))
        if not out:
            raise ValueError("no VLANs allowed: give ranges like 100-199,300")
        return frozenset(out)

    @pydantic.field_validator("protected_ports")
    @classmethod
    def _ports(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for switch, ports in v.items():
            _checked(validate.name, switch, "switch name")
            for p in ports:
                _checked(validate.interface, p)
        return v

    @pydantic.field_serializer("allowed_vlans")
    def _dump_vlans(self, v: frozenset[int]) -> str:
        return vlan_ranges(v)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:  # "100-199,300", not 100 numbers
        for k, v in super().__repr_args__():
            yield k, vlan_ranges(v) if k == "allowed_vlans" else v

    def is_protected(self, switch: str, port: str) -> bool:
        """Interface names compare without case (`ethernet1/1` is `Ethernet1/1` on every vendor)."""
        return port.casefold() in {p.casefold() for p in self.protected_ports.get(switch, [])}


def _unique(where: str, field: str, items: list[tuple[Hashable, str]]) -> None:
    """FieldError at the second of two entries with the same key."""
    seen: dict[Hashable, int] = {}
    for i, (key, label) in enumerate(items):
        if key in seen:
            raise FieldError(f"{where}.{i}.{field}", f"{label} is already {where}.{seen[key]}")
        seen[key] = i


class StoreConfig(_Model):
    path: str = DEFAULT_STORE  # SQLite file

    @pydantic.field_validator("path")
    @classmethod
    def _path(cls, v: str, info: ValidationInfo) -> str:
        return v if v == ":memory:" else str(_path(v, info))


class ServerConfig(_Model):
    """`torshim serve`: where it listens and how often it checks the switches."""

    name: str = "torshim"  # the endpoint name put in answered connections' path
    listen: str = "unix:///run/sriov-nsm/torshim.sock"  # gRPC: unix:///path or host:port
    metrics: str = "127.0.0.1:9103"  # /metrics, /readyz, /healthz; "" turns it off
    request_timeout: float = Field(default=30.0, gt=0)  # when the caller gives no deadline
    reconcile_interval: float = Field(default=300.0, ge=0)  # 0: only on start and reconnect
    # A connection its client stops refreshing (Request again) is closed after this long: NSM's
    # path expiry, so a node that died for good does not keep its VLANs. 0: never.
    connection_ttl: float = Field(default=600.0, ge=0)

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _checked(validate.name, v, "endpoint name")

    @pydantic.field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.startswith("unix://"):
            path = v.removeprefix("unix://")
            if not path.startswith("/") or len(path.encode()) > 107:
                raise ValueError("unix:// needs an absolute socket path of at most 107 bytes")
            return v
        host_port(v)
        return v

    @pydantic.field_validator("metrics")
    @classmethod
    def _metrics(cls, v: str) -> str:
        if v:
            host_port(v)
        return v


class RegistryConfig(_Model):
    """Where the shim registers itself as the endpoint of its services ("" : it does not)."""

    url: str = ""  # the domain's registry: tcp://host:port or unix:///path
    advertise: str = ""  # how callers reach this shim; default: server.listen
    ttl: float = Field(default=60.0, ge=3)  # seconds; refreshed at a third of it

    @pydantic.field_validator("url", "advertise")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v:
            return v
        if v.startswith("unix:///"):
            return v
        if v.startswith("tcp://"):
            host_port(v.removeprefix("tcp://"))
            return v
        raise ValueError(f"{v!r} is neither tcp://host:port nor unix:///path")


def host_port(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"{v!r} is not host:port")
    host = host.strip("[]")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            _match(DOMAIN_RE, host, "host")
    return host, int(port)


class ShimConfig(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    switches: list[SwitchConfig] = Field(default_factory=list)
    port_map: list[PortMapEntry] = Field(default_factory=list)
    services: list[Service] = Field(default_factory=list)
    guard_rails: GuardRails = Field(default_factory=GuardRails)
    store: StoreConfig = Field(default_factory=StoreConfig)
    _source: str = PrivateAttr(default="<config>")  # the file, for error messages

    @pydantic.model_validator(mode="after")
    def _cross_checks(self) -> ShimConfig:
        rails, switches = self.guard_rails, {sw.name for sw in self.switches}
        _unique("switches", "name", [(sw.name, repr(sw.name)) for sw in self.switches])
        for switch in rails.protected_ports:
            if switch not in switches:
                raise FieldError(f"guard_rails.protected_ports.{switch}", "no such switch")
        for i, e in enumerate(self.port_map):
            if e.switch not in switches:
                raise FieldError(f"port_map.{i}.switch", f"no switch named {e.switch!r}")
            if rails.is_protected(e.switch, e.port):
                raise FieldError(f"port_map.{i}.port", f"{e.switch} {e.port} is a protected port")
        _unique(
            "port_map",
            "pf",
            [
                ((e.node, e.pf, e.vf), f"{e.node} {e.pf}" + (f" VF {e.vf}" if e.vf else ""))
                for e in self.port_map
            ],
        )
        _unique(
            "port_map",
            "port",
            [((e.switch, e.port.casefold()), f"{e.switch} {e.port}") for e in self.port_map],
        )
        _unique("services", "name", [(s.name, repr(s.name)) for s in self.services])
        _unique("services", "vlan", [(s.vlan, f"VLAN {s.vlan}") for s in self.services])
        service_vlans = {s.vlan: s.name for s in self.services}
        for i, sw in enumerate(self.switches):
            if sw.parking_vlan in service_vlans:
                raise FieldError(
                    f"switches.{i}.parking_vlan",
                    f"VLAN {sw.parking_vlan} is service {service_vlans[sw.parking_vlan]!r}'s",
                )
        allowed = vlan_ranges(rails.allowed_vlans)
        for i, s in enumerate(self.services):
            if s.vlan not in rails.allowed_vlans:
                raise FieldError(
                    f"services.{i}.vlan",
                    f"VLAN {s.vlan} is outside guard_rails.allowed_vlans ({allowed})",
                )
        return self

    # -- lookups ----------------------------------------------------------------------------------
    def switch(self, name: str) -> SwitchConfig:
        for sw in self.switches:
            if sw.name == name:
                return sw
        raise NotFoundError(f"no switch named {name!r} in {self._source}")

    def switch_params(self, name: str) -> SwitchParams:
        """How to reach switch `name`, with its password read from its file now."""
        sw = self.switch(name)
        password = None
        if sw.password_file is not None:
            try:
                password = read_secret(sw.password_file)
            except ValueError as e:
                i = self.switches.index(sw)
                raise ConfigError(f"{self._source}: switches.{i}.password_file: {e}") from None
        return SwitchParams(
            name=sw.name,
            driver=sw.driver,
            host=sw.host,
            port=sw.effective_port,
            username=sw.username,
            password=password,
            key_file=sw.key_file,
            host_key_checking=sw.host_key_checking,
            known_hosts=sw.known_hosts,
            connect_timeout=sw.connect_timeout,
            command_timeout=sw.command_timeout,
            confirm_timeout=sw.confirm_timeout,
            options=dict(sw.options),
        )

    def port_for(self, node: str, pf: str, *aliases: str) -> SwitchPort | None:
        """The TOR port a node's PF is cabled to. `pf` and `aliases` are the PF's names (interface
        name, PCI address), tried in that order; None when the port map does not know the PF."""
        for ref in (pf, *aliases):
            m = PCI_RE.match(ref)
            key = normalise_pf(ref) if m else ref
            for e in self.port_map:
                if e.node == node and e.pf == key and e.vf is None:
                    return SwitchPort(e.switch, e.port)
        return None

    def vf_port(self, node: str, vf: str) -> SwitchPort | None:
        """The switch port of a VF that has one of its own (a `vf` entry), else None."""
        if not PCI_RE.match(vf):
            return None
        key = normalise_pf(vf)
        for e in self.port_map:
            if e.node == node and e.vf == key:
                return SwitchPort(e.switch, e.port)
        return None

    def service(self, ref: str) -> Service:
        """A service by `name` or `name@domain`."""
        name, _, domain = ref.partition("@")
        for s in self.services:
            if s.name == name and (not domain or s.domain == domain):
                return s
        known = ", ".join(s.ref for s in self.services) or "none"
        raise NotFoundError(f"no service {ref!r} in {self._source} (known: {known})")

    def is_protected(self, switch: str, port: str) -> bool:
        return self.guard_rails.is_protected(switch, port)


# -- loading --------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return at + _one_line(str(getattr(e, "problem", None) or e))


def _first_error(e: pydantic.ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return (f"{loc}.{cause.loc}" if loc else cause.loc), cause.reason
    if isinstance(cause, ValueError):
        return loc or "(top level)", str(cause)
    return loc or "(top level)", err["msg"]


def load_config(path: str) -> ShimConfig:
    """The config in `path`, validated and cross-checked; ConfigError `file: field: reason`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from e
    try:
        data: Any = yaml.safe_load(text)  # YAML is a superset of JSON...
    except yaml.YAMLError as e:
        try:  # ...except for tabs, which JSON allows as whitespace and YAML does not
            data = json.loads(text)
        except ValueError:
            raise ConfigError(f"{path}: not valid YAML or JSON: {_yaml_problem(e)}") from e
    base = os.path.dirname(os.path.abspath(path))
    try:
        cfg = ShimConfig.model_validate(data or {}, context={"base": base})
    except pydantic.ValidationError as e:
        loc, reason = _first_error(e)
        raise ConfigError(f"{path}: {loc}: {_one_line(reason)}") from None
    except ShimError as e:  # the drivers package failed to register, say
        raise ConfigError(f"{path}: {_one_line(str(e))}") from e
    cfg._source = path
    return cfg
