"""`torshim`: the TOR shim's command line. `serve` runs the NetworkService endpoint; `apply`/`release`
put a service on a port by hand; `show` prints connections and ports; `audit [--fix]` compares the
switches with what they should carry; `render` shows what a driver would send, touching nothing;
`drivers` lists the switch flavours; `check-config` validates a config file and summarises it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table as _RichTable

from torshim import ops, validate
from torshim.config import ShimConfig, load_config, vlan_ranges
from torshim.drivers.base import SwitchDriver, SwitchParams, driver_class, driver_names
from torshim.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PolicyError,
    ShimError,
    UnsupportedError,
    ValidationError,
)
from torshim.model import Changeset, PortChange, PortConfig

PROG = "torshim"
FORMATS = ("table", "json", "yaml")
RENDER_HOST = "render.invalid"  # RFC 6761: never resolves, should a driver ever try


# -- output (torshim may not import nicinventory: the same small helpers, for the same look) -------


class Table(_RichTable):
    """A rich table whose cells are plain text: `[100]` in a cell is data, not markup."""

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(escape(c) if isinstance(c, str) else c for c in cells), **kwargs)


def console(out: TextIO | None = None) -> Console:
    out = out or sys.stdout
    return Console(file=out, width=None if out.isatty() else 200, highlight=False)


def dump(data: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


# -- arguments --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("render", help="print what a driver would send for a port change")
    r.add_argument("--driver", required=True, help="driver name (see `torshim drivers`)")
    r.add_argument("--port", required=True, help="switch interface, e.g. Ethernet1/1")
    r.add_argument("--vlans", required=True, help="VLANs to add (or remove), e.g. 100,200-202")
    r.add_argument("--mode", choices=["trunk", "access"], default="trunk")
    r.add_argument("--native", help="native VLAN of the trunk")
    r.add_argument("--remove", action="store_true", help="remove the VLANs instead of adding them")
    r.add_argument(
        "--from-vlans",
        metavar="VLANS",
        help="the VLANs the port carries now (default: none; with --remove: the --vlans)",
    )
    r.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text")

    d = sub.add_parser("drivers", help="the switch drivers: transport and capabilities")
    d.add_argument("-o", "--output", choices=FORMATS, default="table")

    c = sub.add_parser("check-config", help="validate a config file and summarise it")
    c.add_argument("--config", required=True, metavar="FILE")
    c.add_argument("-o", "--output", choices=FORMATS, default="table")

    s = sub.add_parser("serve", help="run the NetworkService endpoint (gRPC), metrics, reconcile")
    s.add_argument("--config", required=True, metavar="FILE")
    s.add_argument("--listen", help="gRPC address, unix:///path or host:port (default: config)")
    s.add_argument("--metrics", help="host:port of /metrics and /readyz; '' turns it off")
    s.add_argument(
        "--advertise", metavar="URL", help="the URL registered for callers (default: config)"
    )
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", default="text", choices=["text", "json"])
    le = s.add_argument_group("leader election (two replicas, one serving)")
    le.add_argument(
        "--leader-elect",
        action="store_true",
        help="serve only while holding a coordination.k8s.io Lease; wait as a standby until then",
    )
    le.add_argument("--lease-name", metavar="NAME", help="the Lease (needed with --leader-elect)")
    le.add_argument(
        "--lease-namespace", metavar="NS", help="its namespace (default: $POD_NAMESPACE)"
    )
    le.add_argument(
        "--lease-duration", type=int, default=15, metavar="SECONDS", help="default: %(default)s"
    )
    le.add_argument(
        "--renew-every", type=float, default=5.0, metavar="SECONDS", help="default: %(default)s"
    )
    le.add_argument(
        "--kubeconfig", metavar="FILE", help="out of a cluster (default: in-cluster credentials)"
    )

    for name, what in (("apply", "put a service on a port"), ("release", "take it off again")):
        a = sub.add_parser(name, help=f"{what} by hand (reference counted with pods' connections)")
        a.add_argument("--config", required=True, metavar="FILE")
        a.add_argument("--switch", required=True)
        a.add_argument("--port", required=True)
        a.add_argument("--service", required=True, help="name or name@domain")
        if name == "apply":
            a.add_argument("--mode", choices=["trunk", "access"], default="trunk")
        a.add_argument("-o", "--output", choices=FORMATS, default="table")

    sh = sub.add_parser("show", help="connections, leases and managed ports in the store")
    sh.add_argument("--config", required=True, metavar="FILE")
    sh.add_argument("-o", "--output", choices=FORMATS, default="table")

    au = sub.add_parser("audit", help="compare the switches with the store; --fix repairs")
    au.add_argument("--config", required=True, metavar="FILE")
    au.add_argument("--switch", help="only this switch")
    au.add_argument("--fix", action="store_true", help="converge drifted and leftover ports")
    au.add_argument("-o", "--output", choices=FORMATS, default="table")
    return p


# -- render ---------------------------------------------------------------------------------------


def render_change(args: argparse.Namespace) -> PortChange:
    """The change `render` is about, every value validated before any driver sees it."""
    port = validate.interface(args.port)
    vlans = validate.parse_vlan_list(args.vlans)
    native = None if args.native is None else validate.vlan(args.native)
    if args.from_vlans is not None:
        current: frozenset[int] | None = validate.parse_vlan_list(args.from_vlans)
    else:
        current = vlans if args.remove else None  # removing assumes the port carries them
    if args.mode == "access":
        if native is not None:
            raise ValidationError("--native applies to trunk ports only")
        for what, vs in (("--vlans", vlans), ("--from-vlans", current)):
            if vs is not None and len(vs) != 1:
                raise ValidationError(f"an access port carries one VLAN: {what} has {len(vs)}")
        (vlan,) = vlans
        before = PortConfig(port) if current is None else PortConfig.access(port, min(current))
        if not args.remove:
            return PortChange(before, PortConfig.access(port, vlan))
        return PortChange(
            before, PortConfig.access(port, None) if before.access_vlan == vlan else before
        )
    before = PortConfig(port) if current is None else PortConfig.trunk(port, current)
    have = current or frozenset()
    after = PortConfig.trunk(port, have - vlans if args.remove else have | vlans, native)
    return PortChange(before, after)


def _port_dict(p: PortConfig) -> dict[str, Any]:
    return {
        "port": p.port,
        "mode": p.mode,
        "access_vlan": p.access_vlan,
        "native_vlan": p.native_vlan,
        "trunk_vlans": sorted(p.trunk_vlans),
    }


def _render(args: argparse.Namespace) -> None:
    change = render_change(args)
    cls = driver_class(args.driver)
    # A driver object with nowhere to go: render() is pure, so nothing is opened or sent.
    driver = cls(SwitchParams(name="render", driver=cls.name, host=RENDER_HOST))
    cs = Changeset(cls.name, ())
    if not change.empty:  # nothing to change is nothing to send, whatever the driver
        driver.check([change])
        cs = driver.render([change])
    if args.output == "text":
        if cs.empty:
            print(f"{PROG}: nothing to send: the port is already in that state", file=sys.stderr)
        else:
            text = cs.text()
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    doc = {
        "driver": cls.name,
        "transport": cls.transport,
        "before": _port_dict(change.before),
        "after": _port_dict(change.after),
        "lines": list(cs.lines),
        "xml": cs.xml,
    }
    dump(doc, args.output, sys.stdout)


# -- drivers --------------------------------------------------------------------------------------


def driver_info(cls: type[SwitchDriver]) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    doc = (cls.__doc__ or getattr(module, "__doc__", None) or "").strip().splitlines()
    return {
        "name": cls.name,
        "transport": cls.transport,
        "capabilities": sorted(cls.capabilities),
        "description": doc[0].strip() if doc else "",
    }


def _drivers(args: argparse.Namespace) -> None:
    rows = [driver_info(driver_class(n)) for n in driver_names()]
    if args.output != "table":
        dump({"drivers": rows}, args.output, sys.stdout)
        return
    t = Table(title=f"{len(rows)} drivers", title_justify="left")
    for col in ("DRIVER", "TRANSPORT", "CAPABILITIES", "DESCRIPTION"):
        t.add_column(col, no_wrap=col != "DESCRIPTION")
    for r in rows:
        t.add_row(r["name"], r["transport"], ", ".join(r["capabilities"]), r["description"])
    console().print(t)


# -- check-config ---------------------------------------------------------------------------------


def config_summary(cfg: ShimConfig) -> dict[str, Any]:
    """The config as data, for `-o json|yaml`: paths to secret files, never their content."""
    doc = cfg.model_dump(mode="json")
    for sw, d in zip(cfg.switches, doc["switches"], strict=True):
        d["transport"], d["port"] = sw.transport, sw.effective_port
    return doc


def config_tables(cfg: ShimConfig) -> list[Table]:
    sw = Table(title=f"{len(cfg.switches)} switches", title_justify="left")
    for col in ("NAME", "DRIVER", "TRANSPORT", "ADDRESS", "USER", "AUTH", "HOST KEY", "TIMEOUTS"):
        sw.add_column(col, no_wrap=True)
    sw.add_column("SESSIONS", justify="right")
    for s in cfg.switches:
        auth = " + ".join(k for k, f in (("password", s.password_file), ("key", s.key_file)) if f)
        sw.add_row(
            s.name,
            s.driver,
            s.transport,
            f"{s.host}:{s.effective_port}",
            s.username,
            f"{auth} (file)",
            ("checked" if s.host_key_checking else "NOT CHECKED"),
            f"connect {s.connect_timeout:g}s, command {s.command_timeout:g}s, "
            f"confirm {s.confirm_timeout}s",
            str(s.max_sessions),
        )
    svc = Table(title=f"{len(cfg.services)} services", title_justify="left")
    for col in ("SERVICE", "VLAN", "MTU", "SUBNET", "ROUTES", "DNS", "NAMESPACES"):
        svc.add_column(col, no_wrap=col not in ("ROUTES", "DNS"))
    for v in cfg.services:
        routes = ", ".join(
            f"{r.prefix}" + (f" via {r.next_hop}" if r.next_hop else "") for r in v.routes
        )
        dns = ", ".join([*(str(a) for a in v.dns.servers), *(f"search {d}" for d in v.dns.search)])
        svc.add_row(
            v.ref,
            str(v.vlan),
            str(v.mtu),
            str(v.subnet),
            routes or "-",
            dns or "-",
            ", ".join(v.namespaces),
        )
    pm = Table(title=f"{len(cfg.port_map)} port map entries", title_justify="left")
    for col in ("NODE", "PF", "SWITCH", "PORT"):
        pm.add_column(col, no_wrap=True)
    for e in cfg.port_map:
        pm.add_row(e.node, e.pf, e.switch, e.port)
    rails = Table(title="guard rails and store", show_header=False, title_justify="left")
    rails.add_column("field", style="bold")
    rails.add_column("value")
    rails.add_row("allowed VLANs", vlan_ranges(cfg.guard_rails.allowed_vlans))
    for switch, ports in sorted(cfg.guard_rails.protected_ports.items()):
        rails.add_row(f"protected on {switch}", ", ".join(ports) or "-")
    rails.add_row("store", cfg.store.path)
    return [sw, svc, pm, rails]


def _check_config(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    if args.output != "table":
        dump(config_summary(cfg), args.output, sys.stdout)
        return
    c = console()
    for t in config_tables(cfg):
        c.print(t)


# -- apply, release, show, audit ------------------------------------------------------------------


def _apply_release(args: argparse.Namespace) -> None:
    doc = ops.apply(args) if args.command == "apply" else ops.release(args)
    if args.output != "table":
        dump(doc, args.output, sys.stdout)
        return
    after = ops.port_text(PortConfig(doc["port"], **doc["port_config"]))
    verb = "applied" if args.command == "apply" else "released"
    print(
        f"{verb} {doc['service']} on {doc['switch']} {doc['port']}: port is now {after}; "
        f"{doc['users']} connection(s) use the service there"
    )


def _show(args: argparse.Namespace) -> None:
    doc = ops.show(args)
    if args.output != "table":
        dump(doc, args.output, sys.stdout)
        return
    t = Table(title=f"{len(doc['connections'])} connections", title_justify="left")
    for col in (
        "ID",
        "SERVICE",
        "SWITCH",
        "PORT",
        "MODE",
        "NODE",
        "PF",
        "VF",
        "NAMESPACE",
        "ADDRESS",
    ):
        t.add_column(col, no_wrap=col != "ID")
    for c in doc["connections"]:
        t.add_row(
            c["id"],
            c["service"],
            c["switch"],
            c["port"],
            c["mode"],
            c["node"],
            c["pf"] or "-",
            c["vf"] or "-",
            c["namespace"] or "-",
            c["address"] or "-",
        )
    ports = Table(title=f"{len(doc['ports'])} managed ports", title_justify="left")
    for col in ("SWITCH", "PORT", "DESIRED", "LAST APPLIED", "IN SYNC", "USERS"):
        ports.add_column(col, no_wrap=True)
    for p in doc["ports"]:
        cfg = {k: p[k] for k in ("desired", "applied")}
        text = {k: ops.port_text(PortConfig(p["port"], **v)) if v else "-" for k, v in cfg.items()}
        users = ", ".join(f"{s} ×{n}" for s, n in sorted(p["users"].items())) or "-"
        ports.add_row(
            p["switch"],
            p["port"],
            text["desired"],
            text["applied"],
            "yes" if p["in_sync"] else "NO",
            users,
        )
    c = console()
    c.print(t)
    c.print(ports)


def _audit(args: argparse.Namespace) -> int:
    err = console(sys.stderr)
    status = err.status("auditing") if sys.stderr.isatty() and args.output == "table" else None
    if status is not None:
        status.start()
    try:
        reports = ops.audit(args, progress=(status.update if status is not None else None))
    finally:
        if status is not None:
            status.stop()
    dirty = [r for r in reports if r.status not in ops.CLEAN]
    if args.output != "table":
        dump(
            {"ports": [ops.report_dict(r) for r in reports], "clean": not dirty},
            args.output,
            sys.stdout,
        )
        return 1 if dirty else 0
    t = Table(title=f"audit of {len(reports)} ports", title_justify="left")
    for col in ("SWITCH", "PORT", "STATUS", "DESIRED", "ACTUAL", "CONNS", "DETAIL"):
        t.add_column(col, no_wrap=col != "DETAIL")
    style = {"ok": "green", "fixed": "yellow"}
    for r in reports:
        t.add_row(
            r.switch,
            r.port,
            f"[{style.get(r.status, 'bold red')}]{r.status}[/]",
            ops.port_text(r.desired) if r.desired else "-",
            ops.port_text(r.actual),
            str(r.connections),
            r.detail,
        )
    console().print(t)
    if dirty:
        hint = "" if args.fix else "; run with --fix to repair"
        print(f"{PROG}: {len(dirty)} port(s) not as they should be{hint}", file=sys.stderr)
    return 1 if dirty else 0


# -- main -----------------------------------------------------------------------------------------

# The caller's mistake (exit 2) rather than the switch's or the machine's (exit 1).
USER_ERRORS = (
    ValidationError,
    ConfigError,
    NotFoundError,
    PolicyError,
    ConflictError,
    UnsupportedError,
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":
            _render(args)
        elif args.command == "drivers":
            _drivers(args)
        elif args.command == "serve":
            return ops.serve(args)
        elif args.command in ("apply", "release"):
            _apply_release(args)
        elif args.command == "show":
            _show(args)
        elif args.command == "audit":
            return _audit(args)
        else:
            _check_config(args)
    except ShimError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2 if isinstance(e, USER_ERRORS) else 1
    except OSError as e:  # a socket that cannot be bound, a store directory not writable
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error worth a traceback
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
