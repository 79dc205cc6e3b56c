"""Pool configuration, in the two accepted forms, normalised to `PoolSpec`s.

1. The SR-IOV network device plugin's `resourceList`, unchanged, so an existing ConfigMap works:

       {"resourceList": [{"resourceName": "sriov_a", "resourcePrefix": "intel.com",
                          "selectors": {"vendors": ["8086"], "pfNames": ["ens1f0#0-3"]}}]}

   Pools are exclusive, as there: a VF goes to the first pool whose selectors take it.

2. The NSM form: per PF, its capabilities and the service domains it serves; every
   (domain, capability) pair is a resource `<domain>/<capability>`:

       {"nsm": {"pfs": [{"pf": "0000:3b:00.0", "capabilities": ["100g"],
                         "serviceDomains": ["example.com"]}]}}

   One VF may be reachable through several of these resources; state.py keeps it from being handed
   out twice (it is Unhealthy in the others while one holds it). resourceList pools claim first.

JSON or YAML. Errors name the file and the field, e.g. `dp.yaml: resourceList[1].selectors[0].pfNames:
bad VF range '3-1': end before start`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deviceplugin.types import ConfigError
from nicinventory.model import PCI_ADDRESS_RE
from nicinventory.ranges import parse_ranges

DEFAULT_PREFIX = "intel.com"  # the SR-IOV network device plugin's --resource-prefix default
# Kubernetes extended resource names: a DNS subdomain prefix and a name of [A-Za-z0-9_.-].
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_PREFIX_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_HEX4_RE = re.compile(r"^[0-9a-fA-F]{4}$")


def parse_vf_ranges(text: str) -> frozenset[int]:
    """`0,2-7` -> {0, 2, 3, 4, 5, 6, 7}, as after `#` in pfNames / rootDevices."""
    return frozenset(parse_ranges(text, "VF"))


@dataclass(frozen=True)
class PFRef:
    """A PF by name or PCI address, optionally restricted to some VF indexes (`ens1f0#0-3`)."""

    pf: str
    vfs: frozenset[int] | None = None  # None: every VF

    @classmethod
    def parse(cls, text: str) -> PFRef:
        name, sep, ranges = text.partition("#")
        if not name:
            raise ValueError(f"{text!r}: empty PF name")
        return cls(name, parse_vf_ranges(ranges) if sep else None)

    def __str__(self) -> str:
        return self.pf if self.vfs is None else f"{self.pf}#{_ranges_text(self.vfs)}"


def _ranges_text(idx: frozenset[int]) -> str:
    parts, run = [], []
    for i in sorted(idx):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


@dataclass(frozen=True)
class Selector:
    """One selector object: every field given must match (lists are alternatives)."""

    vendors: frozenset[str] | None = None
    devices: frozenset[str] | None = None
    drivers: frozenset[str] | None = None
    pci_addresses: frozenset[str] | None = None
    pf_names: tuple[PFRef, ...] | None = None
    root_devices: tuple[PFRef, ...] | None = None
    link_types: frozenset[str] | None = None
    is_rdma: bool | None = None
    bound_only: bool = False  # NSM form: an unbound VF serves no pod, so it is in no pool


@dataclass(frozen=True)
class PoolSpec:
    prefix: str
    name: str
    selectors: tuple[Selector, ...]  # tried in order; a VF matching any is selected
    exclusive: bool = True  # resourceList pools; NSM-form pools may share VFs
    exclude_topology: bool = False
    is_rdma: bool = False
    need_vhost_net: bool = False
    additional_info: dict[str, dict[str, str]] = field(default_factory=dict, hash=False)
    policy: Literal["pack", "spread"] = "pack"
    origin: str = ""  # where it came from, for messages: "resourceList[0]", "nsm.pfs[1]"

    @property
    def resource_name(self) -> str:
        return f"{self.prefix}/{self.name}"


# -- the file formats, as pydantic models ----------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _hex_list(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    for x in v:
        if not _HEX4_RE.match(x):
            raise ValueError(f"{x!r} is not a 4-digit hex PCI ID")
    return [x.lower() for x in v]


class SelectorModel(_Strict):
    vendors: list[str] | None = None
    devices: list[str] | None = None
    drivers: list[str] | None = None
    pciAddresses: list[str] | None = None
    pfNames: list[str] | None = None
    rootDevices: list[str] | None = None
    linkTypes: list[str] | None = None
    isRdma: bool | None = None
    needVhostNet: bool | None = None

    _v = field_validator("vendors", "devices")(_hex_list)

    @field_validator("pciAddresses")
    @classmethod
    def _pci(cls, v: list[str] | None) -> list[str] | None:
        for x in v or ():
            if not PCI_ADDRESS_RE.match(x.lower()):
                raise ValueError(f"{x!r} is not a PCI address like 0000:3b:02.0")
        return [x.lower() for x in v] if v is not None else None

    @field_validator("pfNames", "rootDevices")
    @classmethod
    def _refs(cls, v: list[str] | None) -> list[str] | None:
        for x in v or ():
            PFRef.parse(x)  # raises ValueError with the reason
        return v

    @field_validator("linkTypes")
    @classmethod
    def _links(cls, v: list[str] | None) -> list[str] | None:
        for x in v or ():
            if x.lower() not in ("ether", "infiniband"):
                raise ValueError(f"link type {x!r} is not ether or infiniband")
        return [x.lower() for x in v] if v is not None else None

    def to_selector(self) -> Selector:
        def fs(v: list[str] | None) -> frozenset[str] | None:
            return None if v is None else frozenset(v)

        return Selector(
            vendors=fs(self.vendors),
            devices=fs(self.devices),
            drivers=fs(self.drivers),
            pci_addresses=fs(self.pciAddresses),
            pf_names=None if self.pfNames is None else tuple(map(PFRef.parse, self.pfNames)),
            root_devices=(
                None if self.rootDevices is None else tuple(map(PFRef.parse, self.rootDevices))
            ),
            link_types=fs(self.linkTypes),
            is_rdma=self.isRdma,
        )


class ResourceModel(_Strict):
    resourceName: str
    resourcePrefix: str | None = None
    deviceType: str = "netDevice"
    excludeTopology: bool = False
    additionalInfo: dict[str, dict[str, str]] = Field(default_factory=dict)
    # One object or a list tried in order; held as a list (errors then say `selectors[0]`).
    selectors: list[SelectorModel] = Field(default_factory=lambda: [SelectorModel()])
    allocationPolicy: Literal["pack", "spread"] = "pack"  # ours: see GetPreferredAllocation

    @field_validator("selectors", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("resourceName")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid resource name ([A-Za-z0-9_.-], 63 at most)")
        return v

    @field_validator("resourcePrefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and not _PREFIX_RE.match(v):
            raise ValueError(f"{v!r} is not a DNS subdomain")
        return v

    @field_validator("deviceType")
    @classmethod
    def _type(cls, v: str) -> str:
        if v != "netDevice":
            raise ValueError(f"deviceType {v!r} is not supported (netDevice only)")
        return v


class NsmPFModel(_Strict):
    pf: str = Field(min_length=1)
    capabilities: list[str] = Field(min_length=1)
    serviceDomains: list[str] = Field(min_length=1)
    vfs: str | None = None  # "0-7": only these VF indexes
    drivers: list[str] | None = None
    excludeTopology: bool = False
    allocationPolicy: Literal["pack", "spread"] = "pack"

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        for x in v:
            if not _NAME_RE.match(x):
                raise ValueError(f"capability {x!r} is not a valid resource name")
        return v

    @field_validator("serviceDomains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for x in v:
            if not _PREFIX_RE.match(x):
                raise ValueError(f"service domain {x!r} is not a DNS subdomain")
        return v

    @field_validator("vfs")
    @classmethod
    def _vfs(cls, v: str | None) -> str | None:
        if v is not None:
            parse_vf_ranges(v)
        return v


class NsmModel(_Strict):
    pfs: list[NsmPFModel] = Field(default_factory=list)


class ConfigModel(_Strict):
    resourceList: list[ResourceModel] = Field(default_factory=list)
    nsm: NsmModel | None = None

    @model_validator(mode="after")
    def _something(self) -> ConfigModel:
        if not self.resourceList and not (self.nsm and self.nsm.pfs):
            raise ValueError("no pools: give resourceList, nsm.pfs, or both")
        return self


# -- normalising ------------------------------------------------------------------------------------


def _pools(cfg: ConfigModel, default_prefix: str, where: str) -> list[PoolSpec]:
    pools: list[PoolSpec] = []
    seen: dict[str, str] = {}

    def add(spec: PoolSpec, loc: str) -> None:
        if spec.resource_name in seen and spec.exclusive:
            raise ConfigError(
                f"{where}: {loc}: duplicate resource {spec.resource_name} (also {seen[spec.resource_name]})"
            )
        seen.setdefault(spec.resource_name, loc)
        pools.append(spec)

    for i, r in enumerate(cfg.resourceList):
        sels = r.selectors
        loc = f"resourceList[{i}]"
        add(
            PoolSpec(
                prefix=r.resourcePrefix or default_prefix,
                name=r.resourceName,
                selectors=tuple(s.to_selector() for s in sels),
                exclusive=True,
                exclude_topology=r.excludeTopology,
                is_rdma=any(s.isRdma for s in sels),
                need_vhost_net=any(s.needVhostNet for s in sels),
                additional_info=r.additionalInfo,
                policy=r.allocationPolicy,
                origin=loc,
            ),
            loc,
        )
    # NSM form: merge every PF that offers the same (domain, capability) into one pool.
    merged: dict[str, tuple[list[Selector], NsmPFModel, str]] = {}
    for i, p in enumerate(cfg.nsm.pfs if cfg.nsm else []):
        vfs = parse_vf_ranges(p.vfs) if p.vfs else None
        by_address = PCI_ADDRESS_RE.match(p.pf.lower())
        ref = PFRef(p.pf.lower() if by_address else p.pf, vfs)  # sysfs spells addresses lower-case
        sel = Selector(
            root_devices=(ref,) if by_address else None,
            pf_names=None if by_address else (ref,),
            drivers=_fs(p.drivers),
            bound_only=True,
        )
        for domain in p.serviceDomains:
            for cap in p.capabilities:
                key = f"{domain}/{cap}"
                if key in seen:
                    raise ConfigError(
                        f"{where}: nsm.pfs[{i}]: resource {key} is also defined by {seen[key]}"
                    )
                sels, first, _ = merged.setdefault(key, ([], p, f"nsm.pfs[{i}]"))
                for opt in ("excludeTopology", "allocationPolicy"):
                    if getattr(first, opt) != getattr(p, opt):
                        raise ConfigError(
                            f"{where}: nsm.pfs[{i}].{opt}: differs from an earlier PF of {key}; "
                            "PFs of one resource must agree"
                        )
                sels.append(sel)
    for key, (sels, first, loc) in merged.items():
        domain, cap = key.split("/", 1)
        pools.append(
            PoolSpec(
                prefix=domain,
                name=cap,
                selectors=tuple(sels),
                exclusive=False,
                exclude_topology=first.excludeTopology,
                policy=first.allocationPolicy,
                origin=loc,
            )
        )
    return pools


def _fs(v: list[str] | None) -> frozenset[str] | None:
    return None if v is None else frozenset(v)


def _loc(err_loc: tuple[Any, ...]) -> str:
    out = ""
    for part in err_loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_config(text: str, where: str, default_prefix: str = DEFAULT_PREFIX) -> list[PoolSpec]:
    """Pools from config text (JSON or YAML); `where` names it in errors."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        import yaml  # only for YAML configs: upstream's are JSON, and the daemon stays smaller

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, for logs
            raise ConfigError(f"{where}: not valid JSON or YAML: {at}{problem}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: (top level): expected an object with resourceList or nsm")
    try:
        cfg = ConfigModel.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {err['loc'][-1]!r}"
        raise ConfigError(f"{where}: {_loc(err['loc'])}: {msg}") from e
    return _pools(cfg, default_prefix, where)


def load_config(path: str, default_prefix: str = DEFAULT_PREFIX) -> list[PoolSpec]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text") from e
    return parse_config(text, path, default_prefix)
