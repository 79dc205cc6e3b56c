"""Benchmarks: speed targets measured against a floor taken in the same run, never asserted in tests.

Timings on shared, noisy machines drift from run to run, so every benchmark reports the median and
the p90 over many runs and, where it can, a ratio to a floor measured alongside it (the same I/O
without the Python work), which drifts much less than the absolute figure.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metric:
    """One reported figure. `met` is None for figures reported for information, without a goal."""

    name: str  # stable key for `-o json`, e.g. "discovery.full_scan"
    label: str  # what the table shows
    unit: str  # "ms", "x" (a ratio), "MB" (10^6 bytes) or "count"
    median: float
    p90: float | None
    goal: str = ""
    met: bool | None = None
    runs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    p99: float | None = None  # where the tail is the point (a call on a pod's startup path)

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "-"
        return "OK" if self.met else "MISSED"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "unit": self.unit,
            "median": round(self.median, 4),
            "p90": None if self.p90 is None else round(self.p90, 4),
            "p99": None if self.p99 is None else round(self.p99, 4),
            "goal": self.goal or None,
            "verdict": self.verdict,
            "runs": self.runs,
            **self.extra,
        }


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..100): defined for any sample count, even --quick's few."""
    ordered = sorted(samples)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def p90(samples: list[float]) -> float:
    return percentile(samples, 90)


def p99(samples: list[float]) -> float:
    return percentile(samples, 99)


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e6


def sample_interleaved(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, list[float]]:
    """Time each function `runs` times, alternating them, so noise on the shared cores hits all alike.

    A ratio of two medians taken minutes apart would mostly measure what the neighbours did meanwhile.
    The garbage collector stays on: the CLI and the watcher pay for it too.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            out[name].append(time_ms(fn))
    return out
