"""Config files for a shim in front of the test switches (netconfd, the Linux switch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from torshim.config import ShimConfig, load_config

SERVICES: list[dict[str, Any]] = [
    {
        "name": "red.example.com",
        "domain": "example.com",
        "vlan": 100,
        "mtu": 9000,
        "subnet": "10.100.0.0/29",
        "routes": [{"prefix": "10.0.0.0/8", "next_hop": "10.100.0.1"}],
        "dns": {"servers": ["10.100.0.2"], "search": ["example.com"]},
        "namespaces": ["red", "shared"],
    },
    {
        "name": "blue.example.com",
        "domain": "example.com",
        "vlan": 200,
        "subnet": "10.200.0.0/24",
        "namespaces": ["*"],
    },
]


def write_config(
    tmp: Path,
    switch: dict[str, Any],
    port_map: list[dict[str, str]],
    *,
    protected: list[str] | None = None,
    server: dict[str, Any] | None = None,
) -> tuple[str, ShimConfig]:
    """A config file in `tmp` with one switch, two services and a store beside it."""
    doc: dict[str, Any] = {
        "switches": [switch],
        "port_map": port_map,
        "services": SERVICES,
        "guard_rails": {
            "allowed_vlans": "100-299",
            "protected_ports": {switch["name"]: protected or []},
        },
        "store": {"path": str(tmp / "torshim.db")},
    }
    if server:
        doc["server"] = server
    path = tmp / "torshim.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path), load_config(str(path))


def netconf_switch(server: Any, **kw: Any) -> dict[str, Any]:
    """The `switches:` entry for a NetconfServer fixture."""
    entry = {
        "name": "tor1",
        "driver": "openconfig",
        "host": "127.0.0.1",
        "port": server.port,
        "username": server.user,
        "key_file": server.key_file,
        "known_hosts": server.known_hosts,
        "connect_timeout": 10,
        "command_timeout": 10,
        "confirm_timeout": 30,
    }
    entry.update(kw)
    return entry


def linux_switch_entry(sw: Any, **kw: Any) -> dict[str, Any]:
    entry = {
        "name": sw.name,
        "driver": "linux",
        "host": sw.host,
        "port": sw.port,
        "username": sw.username,
        "key_file": sw.key_file,
        "known_hosts": sw.known_hosts,
        "connect_timeout": 5,
        "command_timeout": 10,
        "confirm_timeout": 30,
    }
    entry.update(kw)
    return entry
