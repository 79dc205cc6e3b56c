"""`torshim`: the TOR shim's command line. `render` shows what a driver would send, touching nothing;
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

from torshim import validate
from torshim.config import ShimConfig, load_config, vlan_ranges
from torshim.drivers.base import SwitchDriver, SwitchParams, driver_class, driver_names
from torshim.errors import ShimError, ValidationError
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


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":
            _render(args)
        elif args.command == "drivers":
            _drivers(args)
        else:
            _check_config(args)
    except ShimError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error worth a traceback
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
