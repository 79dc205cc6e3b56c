"""`nsm-lab`: the whole system on this machine, with a simulated SR-IOV node and TOR switch.

    nsm-lab demo   [--switch linux|netconf] [--pods FILE] [--prefix P] [--spec FILE] [-o table|json]
                   build, run the scenario, check every expectation, tear down; exit 0 iff all held
    nsm-lab up     [--switch ...] [--pods FILE] [--bare] [--prefix P] [--spec FILE] [-o ...]
                   build it and start the components and pods, and keep it (--bare: node and TOR only)
    nsm-lab status [--prefix P] [-o table|json]   is each piece there? exit 1 if not
    nsm-lab kill COMPONENT [--prefix P] [-o ...]  crash a component, restart it, check the healing
    nsm-lab down   [--prefix P] [-o table|json]   remove it (idempotent)

Bad input is one line on stderr and exit 2; a failed step is one line and exit 1, after the
teardown of whatever was built. Ctrl-C (or SIGTERM) during `up` or `demo` tears down too (130).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from lab import build, components, demo, heal
from lab.scenario import Scenario, ScenarioError, load_scenario
from lab.topology import (
    DEFAULT_PREFIX,
    SWITCHES,
    Lab,
    SpecError,
    build_topology,
    check_prefix,
    load_spec,
)


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(message)


def _subcommand(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand with the options every one has (--prefix, -o)."""
    sp: argparse.ArgumentParser = sub.add_parser(name, help=text)
    sp.add_argument("--prefix", default=DEFAULT_PREFIX, help="names of this lab (default nsmlab)")
    sp.add_argument("-o", "--output", choices=("table", "json"), default="table")
    return sp


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nsm-lab",
        description="The whole system (device plugin, nsmgr, registry, torshim) on a simulated"
        " SR-IOV node and TOR switch.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo_ = _subcommand(sub, "demo", "build, run the scenario, check it, tear down")
    up = _subcommand(sub, "up", "build the lab and run it (leftovers of the prefix go first)")
    for sp in (demo_, up):
        sp.add_argument("--spec", help="lab spec YAML (default: the bundled 2-PF lab)")
        sp.add_argument(
            "--switch",
            choices=SWITCHES,
            default="linux",
            help="the TOR: linux (bridges over SSH) or netconf (netconfd + OpenConfig)",
        )
        sp.add_argument("--pods", help="pods (and services) YAML (default: configs/lab-pods.yaml)")
    up.add_argument("--bare", action="store_true", help="only the node and the TOR: no components")
    _subcommand(sub, "status", "check each piece of the lab")
    kill = _subcommand(sub, "kill", "crash a component, start it again, check the healing")
    kill.add_argument("component", choices=heal.KILLABLE)
    _subcommand(sub, "down", "remove the lab (idempotent)")
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
    if tor.get("switch") == "netconf":
        console.print(
            f"TOR {tor['name']} (netconf): NETCONF {tor['username']}@{tor['address']}:"
            f"{tor['port']} via {tor['management_link']} (netconfd pid {tor['netconfd_pid']}, "
            f"TOR agent pid {tor['agent_pid']}); torshim config {tor['torshim_config']} "
            f"(driver {tor['driver']})",
            highlight=False,
        )
    else:
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


def _lab_and_scenario(args: argparse.Namespace) -> tuple[Lab, Scenario | None]:
    """Both checked before anything is built (SpecError, ScenarioError: exit 2)."""
    lab = build_topology(load_spec(args.spec), args.prefix, switch=args.switch)
    bare = getattr(args, "bare", False)
    return lab, None if bare else load_scenario(args.pods)


@contextlib.contextmanager
def _teardown_on_interrupt() -> Iterator[None]:
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _up(args: argparse.Namespace, out: Console, err: Console) -> int:
    as_json = args.output == "json"
    lab, scenario = _lab_and_scenario(args)  # bad input: exit 2 (main), nothing built
    with _teardown_on_interrupt(), _progress(err, err.is_terminal and not as_json) as progress:
        info = build.up(lab, progress)
        if scenario is not None:
            timer = demo.Timer()
            try:
                info["components"], info["pods"] = demo.start_scenario(
                    lab, scenario, timer, progress
                )
                info["timings"] = timer.phases
            except BaseException:
                with contextlib.suppress(Exception):
                    components.stop_all(lab)
                    build.destroy(lab.prefix)
                raise
    if as_json:
        print(json.dumps(info, indent=1))
    else:
        _print_up(out, info)
        if "pods" in info:
            _print_pods(out, info["pods"])
    return 0 if all(r["ok"] for r in info.get("pods", [])) else 1


def _demo(args: argparse.Namespace, out: Console, err: Console) -> int:
    as_json = args.output == "json"
    lab, scenario = _lab_and_scenario(args)  # bad input: exit 2 (main), nothing built
    assert scenario is not None
    with _teardown_on_interrupt(), _progress(err, err.is_terminal and not as_json) as progress:
        result = demo.run(lab, scenario, progress)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        _print_demo(out, result)
    for e in result["errors"]:
        _fail(e)
    return 0 if result["ok"] else 1


def _kill(args: argparse.Namespace, out: Console, err: Console) -> int:
    as_json = args.output == "json"
    lab = components.load_lab(args.prefix)
    with _progress(err, err.is_terminal and not as_json) as progress:
        result = heal.kill(lab, args.component, progress)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        t = result["timings"]
        out.print(
            f"{result['component']}: killed pid {result['old_pid']}, running again as pid "
            f"{result['new_pid']} after {t['ready']:.2f} s, healed after {t['healed']:.2f} s",
            highlight=False,
        )
        _print_checks(out, "healing", result["checks"])
        _print_pods(out, result["pods"])
    return 0 if result["ok"] else 1


def _print_pods(console: Console, rows: list[dict[str, Any]]) -> None:
    t = Table(title="pods")
    for col in (
        "pod",
        "service",
        "resource",
        "VF PCI",
        "interface",
        "IP",
        "MTU",
        "TOR port",
        "VLAN",
        "ok",
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["pod"], r["service"], r["resource"], r["vf_pci"] or "-", r["interface"],
            r["ip"] or "-", str(r["mtu"] or "-"), r["tor_port"] or "-", str(r["vlan"] or "-"),
            "yes" if r["ok"] else f"NO: {r['problem']}",
        )  # fmt: skip
    console.print(t)


def _print_checks(console: Console, title: str, checks: dict[str, dict[str, Any]]) -> None:
    t = Table(title=title)
    for col in ("check", "ok", "detail"):
        t.add_column(col)
    for name, c in checks.items():
        t.add_row(name, "yes" if c["ok"] else "NO", c["detail"])
    console.print(t)


def _print_demo(console: Console, result: dict[str, Any]) -> None:
    _print_pods(console, result["pods"])
    m = Table(title="ping matrix")
    for col in ("from", "to", "address", "expected", "reached", "ok"):
        m.add_column(col)
    for e in result["matrix"]:
        m.add_row(
            e["from"], e["to"], e["address"], "reach" if e["expected"] else "blocked",
            "yes" if e["reached"] else "no", "yes" if e["ok"] else "NO",
        )  # fmt: skip
    console.print(m)
    checks = {"torshim_audit (attached)": result["audit"], **result["teardown"]}
    _print_checks(console, "switch and teardown", checks)
    t = Table(title="timings")
    t.add_column("phase")
    t.add_column("seconds", justify="right")
    for phase, secs in result["timings"].items():
        t.add_row(phase, f"{secs:.2f}")
    console.print(t)
    if result.get("logs"):
        console.print(f"component logs kept in {result['logs']}", highlight=False)
    verdict = "all expectations held" if result["ok"] else "some expectations did NOT hold"
    console.print(f"lab {result['prefix']} ({result.get('switch')}): {verdict}", highlight=False)


def _status(args: argparse.Namespace, out: Console, _err: Console) -> int:
    st = build.status(args.prefix)
    pods: list[dict[str, Any]] = []
    if st.get("present"):
        with contextlib.suppress(build.LabError):
            lab = components.load_lab(args.prefix)
            for c in components.status(lab):
                st["checks"].append(
                    {"what": "component", "name": c["name"], "ok": c["running"],
                     "detail": f"pid {c['pid']}" if c["running"] else f"not running ({c['log']})"}
                )  # fmt: skip
            path = components.scenario_path(lab)
            if path and components.pid_of(lab, "nsmgr") and components.pid_of(lab, "node"):
                with contextlib.suppress(Exception):  # a half-dead lab: the checks say why
                    pods = heal.snapshot(lab, load_scenario(path))
            st["ok"] = all(c["ok"] for c in st["checks"])
    st["pods"] = pods
    if args.output == "json":
        print(json.dumps(st, indent=1))
    else:
        _print_status(out, st)
        if pods:
            _print_pods(out, pods)
    return 0 if st["ok"] else 1


def _down(args: argparse.Namespace, out: Console, _err: Console) -> int:
    removed = build.destroy(args.prefix)
    if args.output == "json":
        print(json.dumps({"prefix": args.prefix, "removed": removed}, indent=1))
    else:
        out.print(
            f"lab {args.prefix}: "
            + ("removed " + ", ".join(removed) if removed else "nothing to remove"),
            highlight=False,
        )
    return 0


Handler = Callable[[argparse.Namespace, Console, Console], int]
# One handler per subcommand (add the subcommand to _parser() too); LabError -> exit 1 and
# Ctrl-C -> exit 130 are handled for all of them in main().
HANDLERS: dict[str, Handler] = {
    "demo": _demo,
    "up": _up,
    "status": _status,
    "kill": _kill,
    "down": _down,
}


def main(argv: list[str] | None = None) -> int:
    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:  # piped or captured: no 80-column squeeze of the pod table
        out = Console(width=160)
    try:
        args = _parser().parse_args(argv)
        check_prefix(args.prefix)
    except (_Usage, SpecError) as e:
        _fail(e)
        return 2
    try:
        return HANDLERS[args.command](args, out, err)
    except (SpecError, ScenarioError) as e:  # a bad spec or pods file
        _fail(e)
        return 2
    except build.LabError as e:
        _fail(e)
        return 1
    except KeyboardInterrupt:
        _fail("interrupted; what was built has been removed")
        return 130


if __name__ == "__main__":
    sys.exit(main())
