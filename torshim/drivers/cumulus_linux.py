"""NVIDIA Cumulus Linux 5.x with NVUE, over SSH (netmiko `cumulus_linux`).

Ports live in a VLAN-aware bridge domain (`br_default` unless `options.bridge_domain`). `nv set`
/`nv unset` lines stage a pending revision; `nv config apply -y` applies it as a whole. A rejected
line or a failed apply is followed by `nv config detach`, which sets the pending revision aside,
so nothing is half-applied. VLANs a port needs are also added to the bridge domain (idempotent).

Two NVUE semantics shape the render: a bridge port with no `vlan` list carries every VLAN of the
bridge, so a trunk losing its last VLAN leaves the bridge domain instead; and an interface name
with `-` or `,` is a range in NVUE, so port names here are stricter than Linux's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

from torshim import validate
from torshim.drivers.base import register
from torshim.drivers.cli_session import RC_ERROR, CliDriver, with_rc
from torshim.drivers.switchport import vlan_ranges
from torshim.errors import (
    CommandRejected,
    CommitError,
    ConnectError,
    UnsupportedError,
    ValidationError,
)
from torshim.model import Changeset, PortChange, PortConfig

ERROR_PATTERNS = (RC_ERROR, r"^Error:.*$", r"^Invalid (config|Command).*$")
_PLAIN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,14}$")  # no `-`/`,`: NVUE reads those as ranges


def nv_name(name: str, what: str = "interface name") -> str:
    validate.linux_ifname(name)
    if not _PLAIN_NAME.match(name):
        raise ValidationError(f"invalid NVUE {what} {name!r} (letters, digits, _ and . only)")
    return name


@register
class CumulusLinux(CliDriver):
    name = "cumulus_linux"
    device_type = "cumulus_linux"
    capabilities = frozenset({"trunk", "access", "native-vlan", "candidate"})
    error_patterns = ERROR_PATTERNS
    save_command = "nv config save"

    @property
    def bridge(self) -> str:
        return nv_name(str(self.params.options.get("bridge_domain", "br_default")), "bridge domain")

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        lines: list[str] = []
        for ch in changes:
            lines += render_change(ch, self.bridge)
        return Changeset(self.name, tuple(changes), tuple(lines))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        ports = [nv_name(p) for p in ports]
        if not ports:
            return {}
        text = self.session.command("nv config show -o commands")
        return {p: parse_commands(p, text, self.bridge) for p in ports}

    def send(self, changeset: Changeset) -> None:
        s = self.session
        try:
            s.config([with_rc(line) for line in changeset.lines], enter=False, exit=False)
        except CommandRejected:
            self._detach()
            raise
        timeout = max(self.params.command_timeout, 120.0)
        out = s.command(with_rc("nv config apply -y"), check=False, timeout=timeout)
        if bad := s.rejected(out):
            self._detach()
            raise CommitError(f"{self.params.name}: nv config apply failed: {bad}")

    def _detach(self) -> None:
        # On a dead session the revision stays pending; the next detach or apply sees it.
        with contextlib.suppress(ConnectError):
            self.session.command(with_rc("nv config detach"), check=False)

    def restore(self, changes: Sequence[PortChange]) -> str:
        return "; pending revision detached, nothing applied"


def render_change(ch: PortChange, bridge: str) -> list[str]:
    port = nv_name(ch.port)
    bridge = nv_name(bridge, "bridge domain")
    on = f"nv set interface {port} bridge domain {bridge}"
    off = f"nv unset interface {port} bridge domain {bridge}"
    b, a = ch.before, ch.after
    lines: list[str] = []

    def need(vlans: frozenset[int]) -> None:
        if vlans:
            lines.append(f"nv set bridge domain {bridge} vlan {vlan_ranges(vlans)}")

    if a.mode == "trunk":
        keep = validate.vlans(a.trunk_vlans)
        if not keep:  # an empty vlan list would mean "all": leave the bridge instead
            if a.native_vlan is not None:
                raise UnsupportedError(
                    f"{port}: NVUE cannot carry a native VLAN without tagged ones"
                )
            return [off] if b.mode is not None else []
        had = validate.vlans(b.trunk_vlans) if b.mode == "trunk" else frozenset()
        added, removed = keep - had, had - keep
        need(added)
        if added:
            lines.append(f"{on} vlan {vlan_ranges(added)}")
        if removed:
            lines.append(f"{off} vlan {vlan_ranges(removed)}")
        if b.mode == "access":
            lines.append(f"{off} access")
        native_before = b.native_vlan if b.mode == "trunk" else None
        if a.native_vlan != native_before:
            if a.native_vlan is None:
                lines.append(f"{off} untagged")
            else:
                need(frozenset({validate.vlan(a.native_vlan)}))
                lines.append(f"{on} untagged {validate.vlan(a.native_vlan)}")
    elif a.mode == "access" and a.access_vlan is not None:
        v = validate.vlan(a.access_vlan)
        if b.mode != "access" or b.access_vlan != v:
            need(frozenset({v}))
            lines.append(f"{on} access {v}")
        if b.mode == "trunk":
            lines.append(f"{off} vlan")
            if b.native_vlan is not None:
                lines.append(f"{off} untagged")
    elif b.mode is not None:  # released access port, or stop managing: out of the bridge
        lines.append(off)
    return lines


_SET = re.compile(r"^nv set interface (\S+) bridge domain (\S+)(?: (access|untagged|vlan) (\S+))?$")
_BRIDGE_VLANS = re.compile(r"^nv set bridge domain (\S+) vlan (\S+)$")


def expand_interfaces(text: str) -> list[str]:
    """NVUE's interface lists: `swp1-3,swp49-50,bond1` -> swp1, swp2, swp3, swp49, ..."""
    out: list[str] = []
    for part in text.split(","):
        m = re.fullmatch(r"(.*?)(\d+)-(\d+)", part)
        if m and int(m.group(2)) <= int(m.group(3)):
            out += [f"{m.group(1)}{i}" for i in range(int(m.group(2)), int(m.group(3)) + 1)]
        else:
            out.append(part)
    return out


def parse_commands(port: str, text: str, bridge: str) -> PortConfig:
    """`nv config show -o commands` -> the port's config in `bridge`. A member port without
    `access` or `vlan` is a trunk of every VLAN of the bridge domain (NVUE's default)."""
    member = False
    access: int | None = None
    native: int | None = None
    vlans: set[int] | None = None
    bridge_vlans: set[int] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if (m := _BRIDGE_VLANS.match(line)) and m.group(1) == bridge:
            bridge_vlans |= validate.parse_vlan_list(m.group(2))
            continue
        m = _SET.match(line)
        if not m or m.group(2) != bridge or port not in expand_interfaces(m.group(1)):
            continue
        member = True
        key, value = m.group(3), m.group(4)
        if key == "access":
            access = validate.vlan(value)
        elif key == "untagged":
            native = None if value == "none" else validate.vlan(value)
        elif key == "vlan":
            vlans = (vlans or set()) | validate.parse_vlan_list(value)
    if not member:
        return PortConfig(port)
    if access is not None:
        return PortConfig(port, "access", access)
    carried = vlans if vlans is not None else (bridge_vlans or {1})
    return PortConfig(port, "trunk", None, native, frozenset(carried))
