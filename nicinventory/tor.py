"""Which TOR switch port each PF is cabled to: lldpd's neighbours, or a static map from config.

A static entry wins over LLDP for the same PF: operators write one precisely where LLDP is wrong or
absent (Intel 700-series firmware swallows LLDP frames unless its agent is turned off).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

from nicinventory.model import TorPort

log = logging.getLogger(__name__)

# Port-ID subtypes that name the switch port; for others (mac, ...) the port description does.
_NAME_SUBTYPES = {"ifname", "local", "ifalias"}


def _items(value: Any) -> Iterable[tuple[str, Any]]:
    """lldpcli's `-f json` gives one neighbour as an object and several as a list of objects."""
    if isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, list):
        for entry in value:
            if isinstance(entry, dict):
                yield from entry.items()


def _text(value: Any) -> str | None:
    """A leaf in either JSON flavour: "x", {"value": "x"} or [{"value": "x"}]."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("value")
    return value if isinstance(value, str) and value else None


def _chassis_name(chassis: Any) -> str | None:
    """The system name; without one, the chassis ID (usually a MAC) still identifies the switch."""
    if isinstance(chassis, list):
        chassis = chassis[0] if chassis else {}
    if not isinstance(chassis, dict):
        return None
    if "name" in chassis:  # json0 flavour
        return _text(chassis["name"])
    if "id" in chassis:  # json flavour, no system name advertised
        return _text(chassis["id"])
    for name, body in chassis.items():  # json flavour: {"<sysname>": {"id": ..., "descr": ...}}
        if isinstance(body, dict):
            return name
    return None


def _port_name(port: Any) -> str | None:
    if isinstance(port, list):
        port = port[0] if port else {}
    if not isinstance(port, dict):
        return None
    pid = port.get("id")
    if isinstance(pid, list):
        pid = pid[0] if pid else {}
    if isinstance(pid, dict) and pid.get("type") in _NAME_SUBTYPES and _text(pid):
        return _text(pid)
    return _text(port.get("descr")) or (_text(pid) if isinstance(pid, dict) else None)


def parse_lldp_neighbors(doc: Mapping[str, Any]) -> dict[str, TorPort]:
    """Local ifname -> neighbour switch and port, from `lldpcli -f json|json0 show neighbors`."""
    out: dict[str, TorPort] = {}
    lldp = doc.get("lldp")
    if isinstance(lldp, list):  # json0: {"lldp": [{"interface": [{"name": ..., ...}]}]}
        lldp = lldp[0] if lldp else {}
    if not isinstance(lldp, dict):
        return out
    interfaces = lldp.get("interface")
    if isinstance(interfaces, list) and interfaces and "name" in interfaces[0]:
        pairs: Iterable[tuple[str, Any]] = ((i.get("name"), i) for i in interfaces)
    else:
        pairs = _items(interfaces)
    for ifname, body in pairs:
        if not isinstance(body, dict) or not isinstance(ifname, str):
            continue
        switch, port = _chassis_name(body.get("chassis")), _port_name(body.get("port"))
        if switch and port:
            out[ifname] = TorPort(switch=switch, port=port, source="lldp")
    return out


def read_lldp_neighbors(
    lldpcli: str = "lldpcli", ctl_socket: str | None = None
) -> dict[str, TorPort]:
    """Ask a running lldpd; an absent lldpcli or a stopped daemon just means no LLDP data."""
    exe = shutil.which(lldpcli)
    if exe is None:
        return {}
    cmd = [exe] + (["-u", ctl_socket] if ctl_socket else []) + ["-f", "json", "show", "neighbors"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("lldpcli failed: %s", e)
        return {}
    if res.returncode != 0:
        log.debug("lldpcli exited %d: %s", res.returncode, res.stderr.strip())
        return {}
    try:
        return parse_lldp_neighbors(json.loads(res.stdout or "{}"))
    except ValueError as e:
        log.warning("lldpcli printed something that is not JSON: %s", e)
        return {}


class TorMap:
    """PF (PCI address or ifname) -> TorPort. Static entries first, then LLDP neighbours by ifname."""

    def __init__(
        self, static: Mapping[str, TorPort] | None = None, lldp: Mapping[str, TorPort] | None = None
    ) -> None:
        self.static = dict(static or {})
        self.lldp = dict(lldp or {})

    def lookup(self, pci_address: str, ifname: str | None) -> TorPort | None:
        for key in (pci_address, ifname):
            if key is not None and key in self.static:
                return self.static[key]
        if ifname is not None:
            return self.lldp.get(ifname)
        return None
