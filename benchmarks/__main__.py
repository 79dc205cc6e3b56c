"""`python -m benchmarks`: run every benchmark and report median, p90 (p99 where given), goal and
verdict.

Exits 0 even when a goal is missed: a slow run on a busy machine is a figure to look at, not a build
failure. Missed goals are printed as MISSED (and listed under "missed" in the JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable

from rich.table import Table

from benchmarks import (
    Metric,
    bench_deviceplugin,
    bench_discovery,
    bench_lab,
    bench_nsm,
    bench_nsmgr,
    bench_registry,
    bench_torshim,
)
from nicinventory.render import console as make_console

BENCHMARKS: dict[str, Callable[[bool], list[Metric]]] = {
    "discovery": bench_discovery.run,
    "deviceplugin": bench_deviceplugin.run,
    "torshim": bench_torshim.run,
    "nsmgr": bench_nsmgr.run,
    "registry": bench_registry.run,
    "nsm": bench_nsm.run,
    "lab": bench_lab.run,
}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}×"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:g}"


def table(metrics: list[Metric], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col, justify in (
        ("metric", "left"),
        ("median", "right"),
        ("p90", "right"),
        ("p99", "right"),
    ):
        t.add_column(col, justify=justify, no_wrap=col != "metric")  # type: ignore[arg-type]
    t.add_column("goal")
    t.add_column("verdict", no_wrap=True)
    style = {"OK": "green", "MISSED": "bold red", "-": "dim"}
    for m in metrics:
        t.add_row(
            m.label,
            _fmt(m.median, m.unit),
            _fmt(m.p90, m.unit),
            _fmt(m.p99, m.unit),
            m.goal or "-",
            f"[{style[m.verdict]}]{m.verdict}[/]",
        )
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument(
        "--quick", action="store_true", help="a few iterations: a smoke run, not figures"
    )
    p.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run just these")
    args = p.parse_args(argv)

    metrics: list[Metric] = []
    for name in args.only or BENCHMARKS:
        metrics.extend(BENCHMARKS[name](args.quick))
    missed = [m.name for m in metrics if m.verdict == "MISSED"]

    if args.output == "json":
        doc = {
            "quick": args.quick,
            "python": platform.python_version(),
            "metrics": [m.to_dict() for m in metrics],
            "missed": missed,
        }
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        if missed:
            print(f"benchmarks: MISSED {len(missed)} goal(s): {', '.join(missed)}", file=sys.stderr)
        return 0

    console = make_console()  # wide when piped, like the CLI's tables
    kind = "quick smoke run, figures not meaningful" if args.quick else "full run"
    console.print(table(metrics, f"benchmarks ({kind}, Python {platform.python_version()})"))
    if missed:
        console.print(f"[bold red]MISSED {len(missed)} goal(s):[/] {', '.join(missed)}")
    else:
        console.print("[green]all goals met[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
