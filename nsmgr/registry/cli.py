"""`nsm-registry`: the Network Service Registry. `serve` runs it; `list` and `show` ask a running
registry over gRPC (`--registry ADDR`, or the address in `--config FILE`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from nicinventory.logs import setup_logging
from nicinventory.render import Table, console, dump
from nsmgr.registry.client import CallError, RegistryClient
from nsmgr.registry.config import DEFAULT_LISTEN, check_listen, load_config
from nsmgr.registry.errors import ConfigError, RegistryError
from nsmgr.registry.model import pb_to_dict
from sriov_nsm_wire.registry import registry_pb2 as pb

PROG = "nsm-registry"
FORMATS = ("table", "json", "yaml")
ENV_REGISTRY = "NSM_REGISTRY"
log = logging.getLogger("nsm-registry")


# -- output ---------------------------------------------------------------------------------------


def _expires_in(nse: pb.NetworkServiceEndpoint, now: float) -> str:
    if not nse.HasField("expiration_time"):
        return "-"
    left = nse.expiration_time.ToNanoseconds() / 1e9 - now
    return f"{left:.0f} s" if left >= 0 else "expired"


def _labels_text(nse: pb.NetworkServiceEndpoint) -> str:
    parts = []
    for svc, labels in sorted(nse.network_service_labels.items()):
        kv = ",".join(f"{k}={v}" for k, v in sorted(labels.labels.items()))
        if kv:
            parts.append(f"{svc}: {kv}")
    return "; ".join(parts) or "-"


def endpoints_table(nses: list[pb.NetworkServiceEndpoint]) -> Table:
    t = Table(title=f"{len(nses)} endpoints", title_justify="left")
    for col in ("NAME", "NETWORK SERVICES", "URL", "EXPIRES IN", "LABELS"):
        t.add_column(col, no_wrap=col in ("NAME", "URL", "EXPIRES IN"))
    now = time.time()
    for e in nses:
        services = ", ".join(e.network_service_names) or "-"
        t.add_row(e.name, services, e.url, _expires_in(e, now), _labels_text(e))
    return t


def services_table(nss: list[pb.NetworkService]) -> Table:
    t = Table(title=f"{len(nss)} network services", title_justify="left")
    for col in ("NAME", "PAYLOAD", "MATCHES"):
        t.add_column(col, no_wrap=True)
    for s in nss:
        t.add_row(s.name, s.payload or "-", str(len(s.matches)))
    return t


def endpoint_detail(e: pb.NetworkServiceEndpoint) -> Table:
    t = Table(title=f"endpoint {e.name}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("url", e.url)
    t.add_row("network services", ", ".join(e.network_service_names) or "-")
    t.add_row("labels", _labels_text(e))
    for field, label in (("expiration_time", "expires"), ("initial_registration_time", "since")):
        if e.HasField(field):
            ts = getattr(e, field)
            t.add_row(label, ts.ToJsonString())
    t.add_row("expires in", _expires_in(e, time.time()))
    return t


def service_detail(s: pb.NetworkService) -> Table:
    t = Table(title=f"network service {s.name}", show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("payload", s.payload or "-")
    for i, m in enumerate(s.matches):
        t.add_row(f"match {i}", json.dumps(pb_to_dict(m), sort_keys=True))
    return t


# -- arguments ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the registry: gRPC, expiry, /metrics and /readyz")
    s.add_argument("--config", required=True, metavar="FILE")
    s.add_argument("--listen", help="gRPC address, host:port or unix:///path (default: config)")
    s.add_argument("--metrics", help="host:port of /metrics and /readyz; '' turns it off")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", default="text", choices=["text", "json"])

    def client_args(c: argparse.ArgumentParser) -> None:
        where = c.add_mutually_exclusive_group()
        where.add_argument(
            "--registry",
            metavar="ADDR",
            help=f"host:port or unix:///path (default: ${ENV_REGISTRY}, else 127.0.0.1:5002)",
        )
        where.add_argument("--config", metavar="FILE", help="ask the registry this config serves")
        c.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
        c.add_argument("-o", "--output", choices=FORMATS, default="table")

    ls = sub.add_parser("list", help="registered network services and live endpoints")
    kind = ls.add_mutually_exclusive_group()
    kind.add_argument("--services", action="store_true", help="network services only")
    kind.add_argument("--endpoints", action="store_true", help="endpoints only")
    ls.add_argument(
        "--network-service",
        metavar="NAME",
        help="only endpoints offering NAME (NAME@domain asks that domain's registry)",
    )
    client_args(ls)

    sh = sub.add_parser("show", help="one endpoint or network service in detail")
    sh.add_argument("name", metavar="NAME", help="its name (NAME@domain: another domain's)")
    client_args(sh)
    return p


def registry_address(args: argparse.Namespace) -> str:
    if args.config:
        listen = load_config(args.config).server.listen
    else:
        listen = args.registry or os.environ.get(ENV_REGISTRY) or DEFAULT_LISTEN
        try:
            check_listen(listen)
        except ValueError as e:
            raise ConfigError(f"--registry: {e}") from None
    for wildcard in ("0.0.0.0:", "[::]:"):  # where a server listens is not where to connect
        if listen.startswith(wildcard):
            return "127.0.0.1:" + listen.removeprefix(wildcard)
    return listen


# -- commands -------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    with RegistryClient(registry_address(args), timeout=args.timeout) as reg:
        doc: dict[str, Any] = {}
        nss: list[pb.NetworkService] = []
        nses: list[pb.NetworkServiceEndpoint] = []
        if not args.endpoints and not args.network_service:
            nss = reg.find_services()
            doc["services"] = [pb_to_dict(s) for s in nss]
        if not args.services:
            nses = reg.find_endpoints(service=args.network_service or "")
            doc["endpoints"] = [pb_to_dict(e) for e in nses]
    if args.output != "table":
        dump(doc, args.output, sys.stdout)
        return 0
    c = console()
    if "services" in doc:
        c.print(services_table(nss))
    if "endpoints" in doc:
        c.print(endpoints_table(nses))
    return 0


def _show(args: argparse.Namespace) -> int:
    address = registry_address(args)
    with RegistryClient(address, timeout=args.timeout) as reg:
        nses = reg.find_endpoints(name=args.name)
        nss = reg.find_services(args.name)
    if not nses and not nss:
        raise CallError(
            f"no endpoint or network service named {args.name!r} at {address}", "NOT_FOUND"
        )
    doc: dict[str, Any] = {}
    if nses:
        doc["endpoint"] = pb_to_dict(nses[0])
    if nss:
        doc["service"] = pb_to_dict(nss[0])
    if args.output != "table":
        dump(doc, args.output, sys.stdout)
        return 0
    c = console()
    if nses:
        c.print(endpoint_detail(nses[0]))
    if nss:
        c.print(service_detail(nss[0]))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from nsmgr.registry.daemon import Daemon

    cfg = load_config(args.config)
    if args.listen is not None:
        try:
            check_listen(args.listen)
        except ValueError as e:
            raise ConfigError(f"--listen: {e}") from None
    setup_logging(args.log_level, args.log_format)
    daemon = Daemon(cfg, listen=args.listen, metrics=args.metrics)

    def on_signal(_signum: int, _frame: object) -> None:
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
        if daemon.http is not None:
            log.info("metrics and readiness on port %d", daemon.http.port)
        daemon.wait()
    finally:
        started = time.monotonic()
        daemon.stop()
        log.info("stopped in %.2f s", time.monotonic() - started)
    return 0


# -- main -----------------------------------------------------------------------------------------

USER_CODES = ("INVALID_ARGUMENT", "NOT_FOUND")  # the caller's mistake: exit 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "list":
            return _list(args)
        return _show(args)
    except CallError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2 if e.code in USER_CODES else 1
    except ConfigError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (RegistryError, OSError) as e:  # a store that cannot open, an address in use
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error worth a traceback
        return 0


if __name__ == "__main__":
    sys.exit(main())
