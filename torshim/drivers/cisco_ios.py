"""Cisco IOS / IOS-XE over SSH (netmiko `cisco_ios`).

IOS has no candidate config: lines take effect as they are typed. A rejected line stops the push,
and the driver sends the touched ports back to their before-state (CliDriver.restore). A port
entering trunk mode gets its full allowed list first (IOS's default is ALL, and `add` to ALL does
nothing); a trunk already managed gets only `add`/`remove`, so VLANs others put there survive.
"""

from __future__ import annotations

from collections.abc import Sequence

from torshim import validate
from torshim.drivers.base import register
from torshim.drivers.cli_session import CliDriver
from torshim.drivers.switchport import Templates, interface_block
from torshim.errors import CommandRejected
from torshim.model import Changeset, PortChange, PortConfig

TEMPLATES = Templates(
    interface="interface {}",
    indent=" ",
    mode="switchport mode {}",
    access="switchport access vlan {}",
    no_access="no switchport access vlan",
    trunk_set="switchport trunk allowed vlan {}",
    trunk_none="switchport trunk allowed vlan none",
    trunk_add="switchport trunk allowed vlan add {}",
    trunk_remove="switchport trunk allowed vlan remove {}",
    no_trunk="no switchport trunk allowed vlan",
    native="switchport trunk native vlan {}",
    no_native="no switchport trunk native vlan",
    default_mode=None,  # no `switchport mode` line: dynamic (DTP); we report it as unmanaged
)

ERROR_PATTERNS = (
    r"^% ?Invalid input detected.*$",
    r"^% ?Incomplete command.*$",
    r"^% ?Ambiguous command.*$",
    r"^% ?Unrecognized command.*$",
    r"^% ?Bad VLAN list.*$",
    r"^% ?Interface .* not found.*$",
    r"^Command rejected:.*$",
    r"^% ?Error.*$",
)


@register
class CiscoIos(CliDriver):
    name = "cisco_ios"
    device_type = "cisco_ios"
    capabilities = frozenset({"trunk", "access", "native-vlan"})
    error_patterns = ERROR_PATTERNS
    save_command = "write memory"
    enable = True

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        lines: list[str] = []
        for ch in changes:
            lines += TEMPLATES.render(ch)
        return Changeset(self.name, tuple(changes), tuple(lines))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        ports = [validate.interface(p) for p in ports]
        out: dict[str, PortConfig] = {}
        for port in ports:
            text = self.session.command(f"show running-config interface {port}")
            out[port] = parse_running_interface(port, text, self.params.name)
        return out

    def send(self, changeset: Changeset) -> None:
        self.session.config(changeset.lines)


def parse_running_interface(port: str, text: str, switch: str = "switch") -> PortConfig:
    block = interface_block(text, TEMPLATES.interface.format(port))
    if block is None:
        raise CommandRejected(f"{switch}: no `interface {port}` in the running config")
    return TEMPLATES.parse(port, block)
