"""Strict patterns for every value that reaches a switch, checked before any session opens.

Interface names are what vendors print (Ethernet1/1, GigabitEthernet0/1, xe-0/0/1, et-0/0/0:1,
swp1, Eth1/1.100): a letter, then letters, digits and `/ . _ : -`; never spaces, `;`, quotes,
newlines or XML metacharacters. Anything else is refused with ValidationError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torshim.errors import ValidationError

INTERFACE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9/._:-]{0,63}$")
LINUX_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # IFNAMSIZ - 1
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")  # switches, services (DNS label-ish)
DESCRIPTION_RE = re.compile(r"^[A-Za-z0-9 _.,:/@+-]{0,80}$")
VLAN_MIN, VLAN_MAX = 1, 4094


def interface(name: str) -> str:
    if not isinstance(name, str) or not INTERFACE_RE.match(name):
        raise ValidationError(f"invalid interface name {name!r}")
    return name


def linux_ifname(name: str) -> str:
    if not isinstance(name, str) or not LINUX_IFNAME_RE.match(name):
        raise ValidationError(f"invalid Linux interface name {name!r}")
    return name


def vlan(value: object) -> int:
    """A VLAN ID: an int (or decimal text) in 1..4094; bool and everything else refused."""
    if isinstance(value, bool):
        raise ValidationError(f"invalid VLAN ID {value!r}")
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,4}", value):
        value = int(value)
    if not isinstance(value, int) or not VLAN_MIN <= value <= VLAN_MAX:
        raise ValidationError(f"invalid VLAN ID {value!r} (1-4094)")
    return value


def vlans(values: Iterable[object]) -> frozenset[int]:
    return frozenset(vlan(v) for v in values)


def name(value: str, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(f"invalid {what} {value!r} (lower case letters, digits, . and -)")
    return value


def description(text: str) -> str:
    if not isinstance(text, str) or not DESCRIPTION_RE.match(text):
        raise ValidationError(f"invalid description {text!r}")
    return text


def parse_vlan_list(text: str) -> frozenset[int]:
    """`100,200-202` -> {100, 200, 201, 202}, each validated."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"([0-9]{1,4})(?:-([0-9]{1,4}))?", part)
        if not m:
            raise ValidationError(f"invalid VLAN list item {part!r}")
        lo, hi = vlan(m.group(1)), vlan(m.group(2) or m.group(1))
        if hi < lo:
            raise ValidationError(f"invalid VLAN range {part!r}: end before start")
        out.update(range(lo, hi + 1))
    return frozenset(out)
