"""The inventory's config file (YAML or JSON): TOR attachment sources and rescan cadence.

lldp: {enabled: true, lldpcli: lldpcli, socket: null}
rescan_period: 60            # seconds between full rescans, the safety net behind events
tor_map:                     # static PF -> TOR port entries; they win over LLDP
  - {pf: "0000:3b:00.0", switch: tor-a, port: Ethernet1/1}    # pf: PCI address or ifname
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nicinventory.errors import ConfigError
from nicinventory.model import TorPort
from nicinventory.tor import TorMap, read_lldp_neighbors


class LldpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    lldpcli: str = "lldpcli"
    socket: str | None = None


class TorMapEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pf: str = Field(min_length=1)
    switch: str = Field(min_length=1)
    port: str = Field(min_length=1)


class InventoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lldp: LldpConfig = Field(default_factory=LldpConfig)
    rescan_period: float = Field(default=60.0, gt=0)
    tor_map: list[TorMapEntry] = Field(default_factory=list)

    def static_tor(self) -> dict[str, TorPort]:
        return {e.pf: TorPort(switch=e.switch, port=e.port, source="config") for e in self.tor_map}

    def tor_map_now(self) -> TorMap:
        """The static map plus what lldpd knows at this moment."""
        lldp = read_lldp_neighbors(self.lldp.lldpcli, self.lldp.socket) if self.lldp.enabled else {}
        return TorMap(self.static_tor(), lldp)


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line (its str() spans several): `line L, column C: problem`."""
    mark = getattr(e, "problem_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return at + " ".join(str(getattr(e, "problem", None) or e).split())


def read_document(path: str, error: Callable[[str], Exception]) -> Any:
    """The YAML (or JSON) document in `path`; `error(message)` is raised with one line naming the
    file. Shared by every room's config loader, so they all fail the same way."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise error(f"{path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from e
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON...
    except yaml.YAMLError as e:
        try:  # ...except for tabs, which JSON allows as whitespace and YAML does not
            return json.loads(text)
        except ValueError:
            raise error(f"{path}: not valid YAML or JSON: {yaml_problem(e)}") from e


def load_config(path: str | None) -> InventoryConfig:
    """Config from a file; defaults when path is None. Errors name the file and the field."""
    if path is None:
        return InventoryConfig()
    data = read_document(path, ConfigError) or {}
    try:
        return InventoryConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {loc}: {err['msg']}") from e
