"""Shared by the CLI driver tests: a driver that must never open a session, the ports each
flavour names, and the port changes the golden renders cover."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torshim.drivers.base import SwitchParams, driver_class
from torshim.drivers.cli_session import CliDriver
from torshim.model import PortConfig

CLI_DRIVERS = ("cisco_ios", "cisco_nxos", "arista_eos", "juniper_junos", "linux", "cumulus_linux")
PORT = {
    "cisco_ios": "GigabitEthernet0/1",
    "cisco_nxos": "Ethernet1/1",
    "arista_eos": "Ethernet1",
    "juniper_junos": "xe-0/0/1",
    "linux": "swp1",
    "cumulus_linux": "swp1",
}

SW = "interfaces xe-0/0/1 unit 0 family ethernet-switching"  # junos: the port's switching family


def params(driver: str, **kw: Any) -> SwitchParams:
    values: dict[str, Any] = {"name": "tor1", "driver": driver, "host": "192.0.2.10"}
    values.update(kw)
    return SwitchParams(**values)


def no_connect(**kwargs: Any) -> Any:
    raise AssertionError(f"a session was opened: {kwargs.get('host')}")


def make(driver: str, **kw: Any) -> CliDriver:
    cls = driver_class(driver)
    assert issubclass(cls, CliDriver)
    return cls(params(driver, **kw), connect=no_connect)


T, A = PortConfig.trunk, PortConfig.access
CASES: dict[str, Callable[[str], tuple[PortConfig, PortConfig]]] = {
    "trunk_add": lambda p: (T(p, {100}), T(p, {100, 200, 201, 202})),
    "trunk_remove": lambda p: (T(p, {100, 200, 300}), T(p, {200})),
    "trunk_to_access": lambda p: (T(p, {100, 200}), A(p, 300)),
    "native": lambda p: (T(p, {100}), T(p, {100}, native=10)),
    "access_to_trunk": lambda p: (A(p, 100), T(p, {200, 300})),
    "access_move": lambda p: (A(p, 100), A(p, 200)),
    "access_release": lambda p: (A(p, 100), A(p, None)),
}
