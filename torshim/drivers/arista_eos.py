"""Arista EOS over SSH (netmiko `arista_eos`).

EOS has configuration sessions: the lines are staged in `configure session torshim-<id>` and take
effect together on `commit`; a rejected line `abort`s the session, so nothing is half-applied.
(`options: {config_session: false}` falls back to `configure terminal` plus restore, for old EOS
and emulators without sessions.) Same switchport words as IOS, three spaces of indent; a port
without a `switchport mode` line is an access port.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from torshim.drivers.base import register
from torshim.drivers.switchport import SwitchportDriver, Templates, parse_running
from torshim.errors import CommandRejected, CommitError
from torshim.model import Changeset, PortChange, PortConfig

TEMPLATES = Templates(
    interface="interface {}",
    indent="   ",
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
    r"^% ?Invalid input.*$",
    r"^% ?Incomplete command.*$",
    r"^% ?Ambiguous command.*$",
    r"^% ?Unavailable command.*$",
    r"^% ?Interface does not exist.*$",
    r"^% ?Error.*$",
)


@register
class AristaEos(SwitchportDriver):
    name = "arista_eos"
    templates = TEMPLATES
    show_interface = "show running-config interfaces {}"
    device_type = "arista_eos"
    capabilities = frozenset({"trunk", "access", "native-vlan", "candidate"})
    error_patterns = ERROR_PATTERNS
    save_command = "copy running-config startup-config"
    enable = True

    @property
    def uses_sessions(self) -> bool:
        return bool(self.params.options.get("config_session", True))

    def send(self, changeset: Changeset) -> None:
        if not self.uses_sessions:
            self.session.config(changeset.lines)
            return
        name = f"torshim-{uuid.uuid4().hex[:8]}"
        s = self.session
        try:
            s.config(changeset.lines, config_command=f"configure session {name}", exit=False)
        except CommandRejected:
            s.command("abort", check=False)
            raise
        try:
            s.command("commit")
        except CommandRejected as e:
            s.command("abort", check=False)
            raise CommitError(str(e)) from e

    def restore(self, changes: Sequence[PortChange]) -> str:
        if self.uses_sessions:
            return "; session aborted, nothing applied"
        return super().restore(changes)


def parse_running_interface(port: str, text: str, switch: str = "switch") -> PortConfig:
    return parse_running(TEMPLATES, port, text, switch)
