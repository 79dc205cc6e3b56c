"""Cisco NX-OS over SSH (netmiko `cisco_nxos`).

Same switchport words as IOS, two spaces of indent, and a port without a `switchport mode` line
is an access port. Lines take effect as typed (no config session here): a rejected line stops the
push and the touched ports are sent back to their before-state (CliDriver.restore).
"""

from __future__ import annotations

from torshim.drivers.base import register
from torshim.drivers.switchport import SwitchportDriver, Templates, parse_running
from torshim.model import PortConfig

TEMPLATES = Templates(
    interface="interface {}",
    indent="  ",
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
    default_mode="access",
)

ERROR_PATTERNS = (
    r"^% ?Invalid (command|number|parameter|range|value|interface).*$",
    r"^% ?Incomplete command.*$",
    r"^% ?Ambiguous command.*$",
    r"^Invalid (interface format|range|command).*$",
    r"^% ?Permission denied.*$",
    r"^ERROR:.*$",
)


@register
class CiscoNxos(SwitchportDriver):
    name = "cisco_nxos"
    templates = TEMPLATES
    show_interface = "show running-config interface {}"
    device_type = "cisco_nxos"
    capabilities = frozenset({"trunk", "access", "native-vlan"})
    error_patterns = ERROR_PATTERNS
    save_command = "copy running-config startup-config"


def parse_running_interface(port: str, text: str, switch: str = "switch") -> PortConfig:
    return parse_running(TEMPLATES, port, text, switch)
