"""Host specs: a YAML description of a node's NICs, materialised as a fake sysfs tree.

hostname: node-a
nics:
  - model: e810                      # catalog key: e810, cx6dx, x710, 82599
    pci_address: "0000:3b:00.0"
    ifname: ens1f0
    numa_node: 0
    link: up                         # up | down
    sriov: true                      # false: no SR-IOV capability at all
    vfs: {"0-5": netdev, "6": vfio, "7": unbound}   # VF indexes -> binding; {} = SR-IOV off
    tor: {switch: tor-a, port: Ethernet1/1}          # optional: the static TOR map entry
other_devices:                       # non-network PCI functions, which discovery skips
  - {pci_address: "0000:5e:00.0", vendor: "144d", device: "a808", class: "0x010802", driver: nvme}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from nicinventory.catalog import MODELS
from nicinventory.errors import ConfigError
from nicinventory.fakesysfs.builder import BuiltPF, FakeSysfs, PFSpec, VFSpec
from nicinventory.model import PCI_ADDRESS_RE, TorPort
from nicinventory.ranges import parse_ranges

BINDINGS = ("netdev", "vfio", "unbound")


def parse_index_ranges(text: str) -> list[int]:
    """`0,2-7` -> [0, 2, 3, 4, 5, 6, 7]; raises ValueError on anything else."""
    return parse_ranges(text, "index")


class TorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    switch: str
    port: str


class NicSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    pci_address: str
    ifname: str | None = None
    numa_node: int = 0
    link: str = "up"
    mtu: int = 1500
    sriov: bool = True
    vfs: dict[str, str] = Field(default_factory=dict)
    tor: TorSpec | None = None
    phys_port_name: str | None = None

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v not in MODELS:
            raise ValueError(f"unknown model {v!r}; known: {', '.join(sorted(MODELS))}")
        return v

    @field_validator("pci_address")
    @classmethod
    def _bdf(cls, v: str) -> str:
        if not PCI_ADDRESS_RE.match(v):
            raise ValueError(f"{v!r} is not a PCI address like 0000:3b:00.0")
        return v

    @field_validator("link")
    @classmethod
    def _link(cls, v: str) -> str:
        if v not in ("up", "down"):
            raise ValueError("link is 'up' or 'down'")
        return v

    @field_validator("vfs")
    @classmethod
    def _vfs(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        seen: set[int] = set()
        for key, binding in v.items():
            if binding not in BINDINGS:
                raise ValueError(f"VF binding {binding!r} is not one of {', '.join(BINDINGS)}")
            indexes = parse_index_ranges(key)
            if seen & set(indexes):
                raise ValueError(f"VF index {min(seen & set(indexes))} given twice")
            seen.update(indexes)
        if seen and sorted(seen) != list(range(len(seen))):
            raise ValueError("VF indexes must be 0..N-1 without gaps, as sriov_numvfs makes them")
        model = MODELS.get(info.data.get("model", ""))  # absent when the model was invalid
        if model is not None and len(seen) > model.total_vfs:
            raise ValueError(f"{model.name} supports {model.total_vfs} VFs, {len(seen)} asked")
        return v

    def vf_specs(self) -> list[VFSpec]:
        bindings: dict[int, str] = {}
        for key, binding in self.vfs.items():
            for i in parse_index_ranges(key):
                bindings[i] = binding
        return [VFSpec(binding=bindings[i]) for i in sorted(bindings)]


class OtherDevice(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    pci_address: str
    vendor: str
    device: str
    pci_class: str = Field(alias="class")
    driver: str


class HostSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hostname: str = "node"
    nics: list[NicSpec] = Field(default_factory=list)
    other_devices: list[OtherDevice] = Field(default_factory=list)

    def tor_map(self) -> dict[str, TorPort]:
        """The static TOR map the spec describes, keyed by PF PCI address."""
        return {
            n.pci_address: TorPort(switch=n.tor.switch, port=n.tor.port, source="config")
            for n in self.nics
            if n.tor
        }


@dataclass
class BuiltHost:
    spec: HostSpec
    sysfs: FakeSysfs
    pfs: list[BuiltPF] = field(default_factory=list)


def load_spec(path: str | None = None) -> HostSpec:
    """A host spec from a YAML file, or the bundled sample host when no path is given."""
    try:
        if path is None:
            text = (
                resources.files("nicinventory.fakesysfs").joinpath("sample-host.yaml").read_text()
            )
            where = "bundled sample-host.yaml"
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            where = path
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from e
    try:
        data: Any = yaml.safe_load(text) or {}
        return HostSpec.model_validate(data)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {yaml_problem(e)}") from e
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"{where}: {loc}: {err['msg']}") from e


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line (its str() spans several): `line L, column C: problem`."""
    mark = getattr(e, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return at + " ".join(str(getattr(e, "problem", None) or e).split())


def build_host(spec: HostSpec, root: str) -> BuiltHost:
    """Materialise a spec as a fake sysfs tree under root."""
    fs = FakeSysfs(root)
    built = BuiltHost(spec=spec, sysfs=fs)
    for nic in spec.nics:
        built.pfs.append(
            fs.add_pf(
                PFSpec(
                    model=nic.model,
                    pci_address=nic.pci_address,
                    ifname=nic.ifname,
                    numa_node=nic.numa_node,
                    link_up=nic.link == "up",
                    mtu=nic.mtu,
                    sriov=nic.sriov,
                    vfs=nic.vf_specs(),
                    phys_port_name=nic.phys_port_name,
                )
            )
        )
    for dev in spec.other_devices:
        fs.add_device(dev.pci_address, dev.vendor, dev.device, dev.pci_class, dev.driver)
    return built
