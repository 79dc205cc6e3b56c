"""Index range lists as operators write them (`0,2-7`): VF indexes in host specs and pool selectors."""

from __future__ import annotations

import re

_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_ranges(text: str, what: str = "index") -> list[int]:
    """`0,2-7` -> [0, 2, 3, 4, 5, 6, 7]; ValueError naming the bad part (as a `what` range)."""
    out: list[int] = []
    for part in str(text).split(","):
        m = _RANGE_RE.match(part.strip())
        if not m:
            raise ValueError(f"bad {what} range {part.strip()!r} (want N or N-M)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"bad {what} range {part.strip()!r}: end before start")
        out.extend(range(lo, hi + 1))
    return out
