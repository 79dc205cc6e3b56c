"""Cisco IOS / IOS-XE over SSH (netmiko `cisco_ios`).

IOS has no candidate config: lines take effect as they are typed. A rejected line stops the push,
and the driver sends the touched ports back to their before-state (CliDriver.restore). A port
entering trunk mode gets its full allowed list first (IOS's default is ALL, and `add` to ALL does
nothing); a trunk already managed gets only `add`/`remove`, so VLANs others put there survive.
"""

from __future__ import annotations

from torshim.drivers.base import register
from torshim.drivers.switchport import SwitchportDriver, Templates, parse_running
from torshim.model import PortConfig

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
class CiscoIos(SwitchportDriver):
    name = "cisco_ios"
    templates = TEMPLATES
    show_interface = "show running-config interface {}"
    device_type = "cisco_ios"
    capabilities = frozenset({"trunk", "access", "native-vlan"})
    error_patterns = ERROR_PATTERNS
    save_command = "write memory"
    enable = True


def parse_running_interface(port: str, text: str, switch: str = "switch") -> PortConfig:
    return parse_running(TEMPLATES, port, text, switch)
