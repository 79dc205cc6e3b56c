"""The IOS-style `switchport` dialect that cisco_ios, cisco_nxos and arista_eos speak.

What is shared is the logic, never the text: which operations a port change needs and in which
order, and how a running-config interface block maps back to a PortConfig. Both are driven by the
`Templates` each vendor file declares, so the command words live in the vendor file only, and the
parser reads exactly what the renderer writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from torshim import validate
from torshim.drivers.cli_session import CliDriver
from torshim.errors import CommandRejected, ValidationError
from torshim.model import Changeset, Mode, PortChange, PortConfig

ALL_VLANS = frozenset(range(validate.VLAN_MIN, validate.VLAN_MAX + 1))


def vlan_ranges(vlans: Iterable[int]) -> str:
    """{100, 200, 201, 202} -> `100,200-202`: the compact list every switchport CLI accepts."""
    items = sorted(validate.vlans(vlans))
    parts: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class Templates:
    """One vendor's switchport command text; `{}` is the port, a VLAN or a VLAN list."""

    interface: str
    indent: str
    mode: str
    access: str
    no_access: str
    trunk_set: str
    trunk_none: str
    trunk_add: str
    trunk_remove: str
    no_trunk: str
    native: str
    no_native: str
    default_mode: Mode | None  # what a port without a `mode` line is (NX-OS, EOS: access)

    @cached_property
    def _parsers(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        """Regexes made from the templates; order matters (`none` before a list, `add` before set)."""
        order = ("trunk_none", "trunk_add", "trunk_remove", "trunk_set", "mode", "access", "native")
        out = []
        for key in order:
            text = re.escape(getattr(self, key)).replace(r"\{\}", r"(\S+)")
            out.append((key, re.compile(rf"^\s*{text}\s*$")))
        return tuple(out)

    def render(self, change: PortChange) -> list[str]:
        """The lines for one port: the new mode's fields first, then the mode, then the old mode's
        leftovers, so the port never carries more than asked while it is being changed."""
        port = validate.interface(change.port)
        b, a = change.before, change.after
        body: list[str] = []
        if a.mode == "trunk":
            if b.mode != "trunk":
                vl = _vlans(a.trunk_vlans)
                body.append(self.trunk_set.format(vlan_ranges(vl)) if vl else self.trunk_none)
                body.append(self._native(a.native_vlan))
                body.append(self.mode.format("trunk"))
                if b.access_vlan is not None:
                    body.append(self.no_access)
            else:
                added, removed = _vlans(change.added_vlans), _vlans(change.removed_vlans)
                if added:
                    body.append(self.trunk_add.format(vlan_ranges(added)))
                if removed:
                    body.append(self.trunk_remove.format(vlan_ranges(removed)))
                if a.native_vlan != b.native_vlan:
                    body.append(self._native(a.native_vlan))
        elif a.mode == "access":
            if b.mode != "access" or a.access_vlan != b.access_vlan:
                body.append(self._access(a.access_vlan))
            if b.mode != "access":
                body.append(self.mode.format("access"))
                if b.trunk_vlans:
                    body.append(self.no_trunk)
                if b.native_vlan is not None:
                    body.append(self.no_native)
        elif a.mode is None:  # stop managing: clear what we set, leave the mode alone
            if b.access_vlan is not None:
                body.append(self.no_access)
            if b.trunk_vlans:
                body.append(self.no_trunk)
            if b.native_vlan is not None:
                body.append(self.no_native)
        else:
            raise ValidationError(f"invalid port mode {a.mode!r}")
        if not body:
            return []
        return [self.interface.format(port), *(self.indent + line for line in body)]

    def _access(self, vlan: int | None) -> str:
        return self.no_access if vlan is None else self.access.format(validate.vlan(vlan))

    def _native(self, vlan: int | None) -> str:
        return self.no_native if vlan is None else self.native.format(validate.vlan(vlan))

    def parse(self, port: str, text: str) -> PortConfig:
        """A `show running-config interface` block -> the port's switched-VLAN config.

        Only the fields of the port's mode are reported: a trunk's leftover access VLAN is not
        what the port carries. A trunk without an allowed-VLAN line carries all VLANs."""
        mode: str | None = self.default_mode
        access: int | None = None
        native: int | None = None
        trunk: set[int] | None = None
        for line in text.splitlines():
            for key, rx in self._parsers:
                m = rx.match(line)
                if not m:
                    continue
                arg = m.group(1) if m.groups() else ""
                if key == "trunk_none":
                    trunk = set()
                elif key == "trunk_set":
                    trunk = set(_parse_list(arg))
                elif key == "trunk_add":
                    trunk = set(_parse_list(arg)) | (trunk or set())
                elif key == "trunk_remove":
                    trunk = (set(ALL_VLANS) if trunk is None else trunk) - _parse_list(arg)
                elif key == "mode":
                    mode = arg if arg in ("trunk", "access") else None  # dynamic, dot1q-tunnel..
                elif key == "access":
                    access = validate.vlan(arg)
                elif key == "native":
                    native = validate.vlan(arg)
                break
        if mode == "trunk":
            vl = ALL_VLANS if trunk is None else frozenset(trunk)
            return PortConfig(port, "trunk", None, native, vl)
        if mode == "access":
            return PortConfig(port, "access", access)
        return PortConfig(port)


def _vlans(values: Iterable[int]) -> frozenset[int]:
    return validate.vlans(values)


def _parse_list(text: str) -> frozenset[int]:
    low = text.lower()
    if low == "all":
        return ALL_VLANS
    if low == "none":
        return frozenset()
    return validate.parse_vlan_list(text)


def interface_block(text: str, header: str) -> str | None:
    """The indented lines under `header` (`interface X`) in a running-config, or None if the
    header is not there (the switch answered about another port, or not at all)."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.strip().lower() == header.lower():
            inside = True
            continue
        if inside:
            if line.strip() and not line[0].isspace():
                break
            out.append(line)
    return "\n".join(out) if inside else None


class SwitchportDriver(CliDriver):
    """The IOS-style flavours (ios, nxos, eos): render, read and send driven by the vendor's
    `templates` and `show_interface` command, both set in the vendor's own file."""

    templates: ClassVar[Templates]
    show_interface: ClassVar[str]  # e.g. "show running-config interface {}"

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        lines: list[str] = []
        for ch in changes:
            lines += self.templates.render(ch)
        return Changeset(self.name, tuple(changes), tuple(lines))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        out: dict[str, PortConfig] = {}
        for port in [validate.interface(p) for p in ports]:
            text = self.session.command(self.show_interface.format(port))
            out[port] = parse_running(self.templates, port, text, self.params.name)
        return out

    def send(self, changeset: Changeset) -> None:
        self.session.config(changeset.lines)


def parse_running(templates: Templates, port: str, text: str, switch: str = "switch") -> PortConfig:
    """One port's config from `show running-config interface <port>` output."""
    block = interface_block(text, templates.interface.format(port))
    if block is None:
        raise CommandRejected(f"{switch}: no `interface {port}` in the running config")
    return templates.parse(port, block)
