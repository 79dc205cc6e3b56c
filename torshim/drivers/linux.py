"""A Linux box as a switch, over SSH (netmiko `linux`): one bridge per VLAN, named `br-v<vlan>`.

One bridge per VLAN because bridge VLAN filtering is not available everywhere (not on our test
bed): a VLAN is the bridge a port is enslaved to.
- access N: the port itself is in `br-vN` (`ip link set dev swp1 master br-vN`); released:
  `nomaster`. Moving a port from one bridge to another is one atomic `master` change.
- trunk: each VLAN V is an 802.1Q sub-port `<port>.<V>` in `br-vV` (the layout of Cumulus'
  "traditional" bridges); a native VLAN is the port itself in `br-v<native>`. This needs the
  kernel's 8021q; a kernel without it (our test bed) answers `Unknown device type`, which is a
  CommandRejected like any other refusal. A trunk with no VLANs and no native VLAN reads back as
  a port with no config (mode None): the kernel has nothing that remembers "trunk".
- Bridges are created when first needed (`options.create_bridges`, default true) and never
  deleted: other ports may use them, and an empty bridge carries nothing.
Lines are sent joined with `&&` into shell lines of at most MAX_LINE bytes, each ending in
`; echo rc=$?`: a shell round trip costs as much as the command, so 50 port changes take two round
trips instead of a hundred. A failing command stops the rest (`&&`), a non-zero rc stops the push,
and the touched ports are put back as they were (CliDriver.restore).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from torshim import validate
from torshim.drivers.base import register
from torshim.drivers.cli_session import RC_ERROR, CliDriver, split_rc, with_rc
from torshim.errors import CommandRejected, ValidationError
from torshim.model import Changeset, PortChange, PortConfig

ERROR_PATTERNS = (RC_ERROR,)
SHOW_LINKS = "ip -j -d link show"
BRIDGE_PREFIX = "br-v"  # one bridge per VLAN: br-v100 (the lab's netconf TOR agent uses it too)
# A pty in canonical mode holds at most 4095 bytes per line: stay well below.
MAX_LINE = 2000


def batch(lines: Sequence[str], limit: int = MAX_LINE) -> list[str]:
    """Join commands with `&&` into as few shell lines as fit under `limit` bytes each."""
    out: list[str] = []
    for line in lines:
        if out and len(out[-1]) + 4 + len(line) <= limit:
            out[-1] = f"{out[-1]} && {line}"
        else:
            out.append(line)
    return out


class Layout:
    """Bridge and sub-port names, validated: each one ends up in a shell command line."""

    def __init__(self, prefix: str = BRIDGE_PREFIX, create_bridges: bool = True) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,10}", prefix):
            raise ValidationError(
                f"invalid bridge prefix {prefix!r} (1-11 of letters, digits, _ -)"
            )
        self.prefix = prefix
        self.create = create_bridges
        self._rx = re.compile(rf"^{re.escape(prefix)}([0-9]{{1,4}})$")

    def bridge(self, vlan: int) -> str:
        return validate.linux_ifname(f"{self.prefix}{validate.vlan(vlan)}")

    def vlan_of(self, bridge: str | None) -> int | None:
        m = self._rx.match(bridge or "")
        return validate.vlan(m.group(1)) if m else None

    def sub(self, port: str, vlan: int) -> str:
        return validate.linux_ifname(f"{port}.{validate.vlan(vlan)}")


def _bridge_vlan(cfg: PortConfig) -> int | None:
    """The VLAN whose bridge holds the port itself: access VLAN, or a trunk's native VLAN."""
    return cfg.access_vlan if cfg.mode == "access" else cfg.native_vlan if cfg.mode else None


def _subs(cfg: PortConfig) -> frozenset[int]:
    return validate.vlans(cfg.trunk_vlans) if cfg.mode == "trunk" else frozenset()


def render_changes(changes: Sequence[PortChange], layout: Layout) -> list[str]:
    lines: list[str] = []
    made: set[int] = set()

    def ensure(vlan: int) -> None:
        if layout.create and vlan not in made:
            br = layout.bridge(vlan)
            lines.append(
                f"ip link show dev {br} >/dev/null 2>&1 || ip link add name {br} up type bridge"
            )
            made.add(vlan)

    for ch in changes:
        port = validate.linux_ifname(ch.port)
        b, a = ch.before, ch.after
        for v in sorted(_subs(b) - _subs(a)):
            lines.append(f"ip link del dev {layout.sub(port, v)}")
        for v in sorted(_subs(a) - _subs(b)):
            ensure(v)
            sub = layout.sub(port, v)
            lines.append(f"ip link add link {port} name {sub} type vlan id {v}")
            lines.append(f"ip link set dev {sub} master {layout.bridge(v)} up")
        vb, va = _bridge_vlan(b), _bridge_vlan(a)
        if va != vb:
            if va is None:
                lines.append(f"ip link set dev {port} nomaster")
            else:
                ensure(validate.vlan(va))
                lines.append(f"ip link set dev {port} master {layout.bridge(va)}")
    return lines


def parse_links(
    text: str, ports: Sequence[str], layout: Layout, switch: str = "switch"
) -> dict[str, PortConfig]:
    """`ip -j -d link show` -> the ports' configs. A port in `br-vN` with no sub-ports is an
    access port; sub-ports `<port>.<V>` (802.1Q, in `br-vV`) make it a trunk; a port in no
    bridge of ours (or in someone else's bridge) has no config we manage."""
    try:
        links: list[dict[str, Any]] = json.loads(text)
    except json.JSONDecodeError as e:
        raise CommandRejected(f"{switch}: unreadable `{SHOW_LINKS}` output: {e}") from e
    by_name = {link.get("ifname"): link for link in links}
    tagged: dict[str, set[int]] = {}
    for link in links:
        info = link.get("linkinfo") or {}
        if info.get("info_kind") != "vlan":
            continue
        vid = (info.get("info_data") or {}).get("id")
        parent = link.get("link")
        if isinstance(vid, int) and parent and layout.vlan_of(link.get("master")) == vid:
            tagged.setdefault(parent, set()).add(vid)
    out: dict[str, PortConfig] = {}
    for port in ports:
        if port not in by_name:
            raise CommandRejected(f"{switch}: no port {port}")
        own = layout.vlan_of(by_name[port].get("master"))
        subs = tagged.get(port, set())
        if subs:
            out[port] = PortConfig(port, "trunk", None, own, frozenset(subs))
        elif own is not None:
            out[port] = PortConfig(port, "access", own)
        else:
            out[port] = PortConfig(port)
    return out


@register
class LinuxSwitch(CliDriver):
    name = "linux"
    device_type = "linux"
    capabilities = frozenset({"trunk", "access", "native-vlan"})
    error_patterns = ERROR_PATTERNS
    save_command = None  # the kernel's state is the running config; nothing to save

    @property
    def layout(self) -> Layout:
        opts = self.params.options
        return Layout(
            str(opts.get("bridge_prefix", BRIDGE_PREFIX)), bool(opts.get("create_bridges", True))
        )

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        return Changeset(self.name, tuple(changes), tuple(render_changes(changes, self.layout)))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        ports = [validate.linux_ifname(p) for p in ports]
        if not ports:
            return {}
        out, rc = split_rc(self.session.command(with_rc(SHOW_LINKS), check=False))
        if rc != 0:
            raise CommandRejected(
                f"{self.params.name}: `{SHOW_LINKS}` failed (rc={rc}): {out[-200:]}"
            )
        return parse_links(out, ports, self.layout, self.params.name)

    def send(self, changeset: Changeset) -> None:
        # No config mode on a shell: the lines run as typed, each batch with its exit status.
        lines = batch(changeset.lines, int(self.params.options.get("max_line", MAX_LINE)))
        self.session.config([with_rc(line) for line in lines], enter=False, exit=False)
