"""Juniper Junos (ELS: EX/QFX) over SSH CLI (netmiko `juniper_junos`).

Junos has a private candidate: `configure private`, `set`/`delete` lines, then `commit confirmed
N` (the switch rolls back by itself after N minutes if we vanish), a post-check that the session
still answers, then `commit` to confirm. A rejected line or a failed commit is followed by
`rollback 0`, so nothing is half-applied. VLAN members are written one VLAN ID per line (no
ranges), so a later `delete` of one VLAN always finds its statement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from torshim import validate
from torshim.drivers.base import register
from torshim.drivers.cli_session import CliDriver
from torshim.drivers.switchport import ALL_VLANS
from torshim.errors import CommandRejected, CommitError, ConnectError, LockDenied
from torshim.model import Changeset, PortChange, PortConfig

ERROR_PATTERNS = (
    r"^error:.*$",
    r"^syntax error.*$",
    r"^\s*unknown command\..*$",
    r"^\s*missing argument\..*$",
    r"^\s*invalid (value|interface|numeric).*$",
    r"^.* is ambiguous\..*$",
)
LOCKED = re.compile(r"database (modified|locked)|configuration database locked", re.I)


def _members(cfg: PortConfig) -> frozenset[int]:
    """Junos puts access and trunk VLANs in the same `vlan members` list."""
    if cfg.mode == "trunk":
        return validate.vlans(cfg.trunk_vlans)
    if cfg.access_vlan is not None:
        return frozenset({validate.vlan(cfg.access_vlan)})
    return frozenset()


def _native(cfg: PortConfig) -> int | None:
    return validate.vlan(cfg.native_vlan) if cfg.native_vlan is not None else None


def render_change(ch: PortChange) -> list[str]:
    port = validate.interface(ch.port)
    sw = f"interfaces {port} unit 0 family ethernet-switching"
    b, a = ch.before, ch.after
    lines: list[str] = []
    if a.mode is not None and a.mode != b.mode:
        lines.append(f"set {sw} interface-mode {a.mode}")
    before, after = _members(b), _members(a)
    lines += [f"delete {sw} vlan members {v}" for v in sorted(before - after)]
    lines += [f"set {sw} vlan members {v}" for v in sorted(after - before)]
    nb, na = _native(b), _native(a)
    if na != nb:
        if na is None:
            lines.append(f"delete interfaces {port} native-vlan-id")
        else:
            lines.append(f"set interfaces {port} native-vlan-id {na}")
    return lines


@register
class JuniperJunos(CliDriver):
    name = "juniper_junos"
    device_type = "juniper_junos"
    capabilities = frozenset({"trunk", "access", "native-vlan", "candidate", "confirmed-commit"})
    error_patterns = ERROR_PATTERNS
    save_command = None  # a Junos commit is persistent

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        lines: list[str] = []
        for ch in changes:
            lines += render_change(ch)
        return Changeset(self.name, tuple(changes), tuple(lines))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        ports = [validate.interface(p) for p in ports]
        if not ports:
            return {}
        names = parse_vlan_names(self.session.command("show configuration vlans | display set"))
        out: dict[str, PortConfig] = {}
        for port in ports:
            text = self.session.command(f"show configuration interfaces {port} | display set")
            out[port] = parse_display_set(port, text, names)
        return out

    def send(self, changeset: Changeset) -> None:
        s = self.session
        out = s.command("configure private", check=False)
        if LOCKED.search(out):  # Junos stays in operational mode: nothing to leave
            raise LockDenied(f"{self.params.name}: configure private: {s.rejected(out) or out}")
        if bad := s.rejected(out):
            raise CommandRejected(f"{self.params.name}: configure private: {bad}")
        try:
            s.config(changeset.lines, enter=False, exit=False)
        except CommandRejected:
            self._discard()
            raise
        minutes = max(1, math.ceil(self.params.confirm_timeout / 60))
        timeout = max(self.params.command_timeout, 120.0)
        out = s.command(f"commit confirmed {minutes}", check=False, timeout=timeout)
        if "commit complete" not in out or s.rejected(out):
            self._discard()
            raise CommitError(f"{self.params.name}: commit failed: {s.rejected(out) or out[-300:]}")
        # Live, and rolled back by the switch in `minutes` unless confirmed. The confirming
        # commit is the post-check: it only succeeds if the session still answers.
        try:
            out = s.command("commit", check=False, timeout=timeout)
        except ConnectError as e:
            raise CommitError(f"{e}; the switch rolls back in {minutes} min") from e
        if "commit complete" not in out:
            raise CommitError(
                f"{self.params.name}: confirm failed ({out[-200:]!r}); "
                f"the switch rolls back in {minutes} min"
            )
        s.command("exit configuration-mode", check=False)

    def _discard(self) -> None:
        try:
            self.session.command("rollback 0", check=False)
            self.session.command("exit configuration-mode", check=False)
        except ConnectError:
            pass  # a private candidate dies with its session

    def restore(self, changes: Sequence[PortChange]) -> str:
        return "; candidate rolled back, nothing committed"


def parse_vlan_names(text: str) -> dict[str, int]:
    """`set vlans v100 vlan-id 100` lines -> {"v100": 100}."""
    out: dict[str, int] = {}
    for m in re.finditer(r"^set vlans (\S+) vlan-id (\d{1,4})\s*$", text, re.M):
        out[m.group(1)] = validate.vlan(m.group(2))
    return out


def parse_display_set(port: str, text: str, names: dict[str, int]) -> PortConfig:
    """`show configuration interfaces X | display set` -> PortConfig. Members may be IDs,
    ranges (`200-202`), VLAN names or `all`; an ethernet-switching family without an
    interface-mode line is an access port (the Junos default)."""
    p = re.escape(port)
    fam = rf"set interfaces {p} unit 0 family ethernet-switching"
    mode: str | None = None
    has_family = False
    members: set[int] = set()
    native: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if re.match(rf"^{fam}(\s|$)", line):
            has_family = True
        if m := re.match(rf"^{fam} (?:interface-mode|port-mode) (trunk|access)$", line):
            mode = m.group(1)
        elif m := re.match(rf"^{fam} vlan members (\S+)$", line):
            members |= _member(m.group(1), names)
        elif m := re.match(
            rf"^set interfaces {p} (?:unit 0 family ethernet-switching )?native-vlan-id (\d+)$",
            line,
        ):
            native = validate.vlan(m.group(1))
    if mode is None and has_family:
        mode = "access"
    if mode == "trunk":
        return PortConfig(port, "trunk", None, native, frozenset(members))
    if mode == "access":
        if len(members) > 1:
            raise CommandRejected(f"{port}: access port with several VLANs {sorted(members)}")
        return PortConfig(port, "access", next(iter(members), None))
    return PortConfig(port)


def _member(text: str, names: dict[str, int]) -> frozenset[int]:
    if text == "all":
        return ALL_VLANS
    if re.fullmatch(r"[0-9]{1,4}(-[0-9]{1,4})?", text):
        return validate.parse_vlan_list(text)
    if text in names:
        return frozenset({names[text]})
    raise CommandRejected(f"VLAN member {text!r} is neither an ID nor a VLAN with a vlan-id")
