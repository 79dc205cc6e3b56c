"""`nsm-lab`: a simulated SR-IOV node and Linux TOR on this machine.

    nsm-lab up     [--prefix P] [--spec FILE] [-o table|json]   build it (leftovers of P removed first)
    nsm-lab status [--prefix P] [-o table|json]                 is each piece there? exit 1 if not
    nsm-lab down   [--prefix P] [-o table|json]                 remove it (idempotent)

Bad input is one line on stderr and exit 2; a failed step is one line and exit 1, after the
teardown of whatever was built. Ctrl-C (or SIGTERM) during `up` tears down too (exit 130).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from lab import build
from lab.topology import DEFAULT_PREFIX, SpecError, build_topology, check_prefix, load_spec


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nsm-lab", description="A simulated SR-IOV node and TOR switch.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, text in (
        ("up", "build the lab (a previous run's leftovers are removed first)"),
        ("status", "check each piece of the lab"),
        ("down", "remove the lab (idempotent)"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument(
            "--prefix", default=DEFAULT_PREFIX, help="names of this lab (default nsmlab)"
        )
        sp.add_argument("-o", "--output", choices=("table", "json"), default="table")
        if name == "up":
            sp.add_argument("--spec", help="lab spec YAML (default: the bundled 2-PF lab)")
    return p


@contextlib.contextmanager
def _progress(console: Console, enabled: bool) -> Iterator[build.Progress]:
    if not enabled:
        yield lambda _msg: None
        return
    with console.status("nsm-lab") as st:
        yield lambda msg: st.update(f"nsm-lab: {msg}")


def _fail(msg: object) -> None:
    """One line on stderr, never wrapped."""
    print(f"nsm-lab: {' '.join(str(msg).split())}", file=sys.stderr)


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _print_up(console: Console, info: dict[str, Any]) -> None:
    if info.get("cleaned"):
        console.print(f"removed leftovers: {', '.join(info['cleaned'])}")
    t = Table(title=f"lab {info['prefix']}: node {info['node']}")
    for col in ("PF", "model", "VF", "PCI address", "netdev", "TOR port"):
        t.add_column(col)
    for pf in info["pfs"]:
        for vf in pf["vfs"]:
            t.add_row(pf["ifname"], pf["model"], str(vf["index"]), vf["pci_address"],
                      vf["netdev"], vf["tor_port"])  # fmt: skip
    console.print(t)
    tor = info["tor"]
    console.print(f"namespaces: node {info['namespaces']['node']}, TOR {info['namespaces']['tor']}")
    console.print(f"fake sysfs: {info['sysfs_root']}")
    console.print(
        f"TOR {tor['name']} (linux): ssh {tor['username']}@{tor['address']} via "
        f"{tor['management_link']}; torshim config {tor['torshim_config']}"
    )


def _print_status(console: Console, st: dict[str, Any]) -> None:
    t = Table(title=f"lab {st['prefix']}: {'up' if st['ok'] else 'not (fully) up'}")
    for col in ("what", "name", "ok", "detail"):
        t.add_column(col)
    for c in st["checks"]:
        t.add_row(c["what"], c["name"], "yes" if c["ok"] else "NO", c["detail"])
    console.print(t)


def main(argv: list[str] | None = None) -> int:
    out, err = Console(), Console(stderr=True)
    try:
        args = _parser().parse_args(argv)
        check_prefix(args.prefix)
    except _Usage as e:
        _fail(e)
        return 2
    except SpecError as e:
        _fail(e)
        return 2
    as_json = args.output == "json"
    try:
        if args.command == "up":
            try:
                lab = build_topology(load_spec(args.spec), args.prefix)
            except SpecError as e:
                _fail(e)
                return 2
            old = signal.signal(signal.SIGTERM, _sigterm)
            try:
                with _progress(err, err.is_terminal and not as_json) as progress:
                    info = build.up(lab, progress)
            finally:
                signal.signal(signal.SIGTERM, old)
            if as_json:
                print(json.dumps(info, indent=1))
            else:
                _print_up(out, info)
            return 0
        if args.command == "status":
            st = build.status(args.prefix)
            if as_json:
                print(json.dumps(st, indent=1))
            else:
                _print_status(out, st)
            return 0 if st["ok"] else 1
        removed = build.destroy(args.prefix)
        if as_json:
            print(json.dumps({"prefix": args.prefix, "removed": removed}, indent=1))
        else:
            out.print(
                f"lab {args.prefix}: "
                + ("removed " + ", ".join(removed) if removed else "nothing to remove"),
                highlight=False,
            )
        return 0
    except build.LabError as e:
        _fail(e)
        return 1
    except KeyboardInterrupt:
        _fail("interrupted; what was built has been removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
