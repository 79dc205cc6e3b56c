"""`nicinventory`: see a node's SR-IOV NICs, their VFs, links and TOR ports; watch them change."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from nicinventory.config import InventoryConfig, load_config
from nicinventory.errors import InventoryError, NotFoundError
from nicinventory.fakesysfs import build_host, load_spec
from nicinventory.model import TorPort
from nicinventory.render import FORMATS, console, dump, inventory_table, nic_tables, write_change
from nicinventory.sysfs import SysfsReader
from nicinventory.tor import TorMap
from nicinventory.watcher import InventoryWatcher

PROG = "nicinventory"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--sysfs-root", metavar="DIR", default="/sys", help="sysfs to read (default /sys)"
    )
    where.add_argument(
        "--sample",
        action="store_true",
        help="read the bundled sample host (a fake sysfs tree built in a temporary folder)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="inventory config: static TOR map, LLDP, rescan"
    )
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def out(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-o", "--output", choices=FORMATS, default="table")

    ls = sub.add_parser("list", help="every NIC with its VFs, link and TOR port")
    out(ls)
    ls.add_argument("--vfs", action="store_true", help="a row per VF under its NIC (table output)")

    show = sub.add_parser("show", help="one NIC in detail")
    show.add_argument("name", help="PF interface name or PCI address (a VF's finds its PF)")
    out(show)

    watch = sub.add_parser("watch", help="live changes, one line or JSON object per change")
    out(watch)
    watch.add_argument("--netns", help="listen for events in this network namespace")
    watch.add_argument("--no-udev", action="store_true", help="no kernel uevents (rescans only)")
    watch.add_argument("--no-netlink", action="store_true", help="no netlink link events")
    watch.add_argument("--rescan-period", type=float, help="seconds between full rescans")
    watch.add_argument("--duration", type=float, help="stop after this many seconds")

    fake = sub.add_parser("fake-sysfs", help="write a fake sysfs tree from a host spec")
    fake.add_argument("dir", help="where to build it (created; must be empty if it exists)")
    fake.add_argument("--spec", help="host spec YAML (default: the bundled sample host)")
    return p


@contextlib.contextmanager
def _reader(args: argparse.Namespace, cfg: InventoryConfig) -> Iterator[SysfsReader]:
    if args.sample:
        spec = load_spec(None)
        with tempfile.TemporaryDirectory(prefix="nicinventory-sample-") as tmp:
            build_host(spec, tmp)
            from_config, from_spec = TorMap(cfg.static_tor()), TorMap(spec.tor_map())

            def lookup(bdf: str, ifname: str | None) -> TorPort | None:  # the user's config wins
                return from_config.lookup(bdf, ifname) or from_spec.lookup(bdf, ifname)

            yield SysfsReader(tmp, lookup)
        return
    yield SysfsReader(args.sysfs_root, cfg.tor_map_now().lookup)


def _list(args: argparse.Namespace, reader: SysfsReader) -> None:
    inv = reader.scan()
    if args.output == "table":
        console().print(inventory_table(inv, with_vfs=args.vfs))
    else:
        dump(inv.to_dict(), args.output, sys.stdout)


def _show(args: argparse.Namespace, reader: SysfsReader) -> None:
    nic = reader.scan().find(args.name)
    if nic is None:
        raise NotFoundError(f"no NIC named {args.name!r} (try `{PROG} list`)")
    if args.output == "table":
        c = console()
        for t in nic_tables(nic):
            c.print(t)
    else:
        dump(nic.to_dict(), args.output, sys.stdout)


def _watch(args: argparse.Namespace, reader: SysfsReader, cfg: InventoryConfig) -> None:
    from nicinventory.events import EventSource, NetlinkSource, UdevSource

    reader.check_root()
    sources: list[EventSource] = []
    if not args.no_udev:
        sources.append(UdevSource(args.netns))
    if not args.no_netlink:
        sources.append(NetlinkSource(args.netns))
    watcher = InventoryWatcher(
        reader,
        sources,
        rescan_period=args.rescan_period or cfg.rescan_period,
        tor_map=None if args.sample else cfg.tor_map_now,
    )
    signal.signal(signal.SIGHUP, lambda *_: watcher.request_rescan("sighup"))
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
    inv = watcher.start()
    print(f"watching {len(inv.nics)} NICs under {reader.root}", file=sys.stderr, flush=True)
    try:
        for change in watcher.changes(timeout=args.duration):
            write_change(change, args.output, sys.stdout)
    finally:
        watcher.stop()


def _fake(args: argparse.Namespace) -> None:
    import os

    if os.path.isdir(args.dir) and os.listdir(args.dir):
        raise InventoryError(f"{args.dir} is not empty")
    spec = load_spec(args.spec)
    existed = os.path.exists(args.dir)
    try:
        built = build_host(spec, args.dir)
    except (OSError, ValueError) as e:  # not a directory, a PCI address used twice...
        if not existed:  # leave nothing half-built behind
            shutil.rmtree(args.dir, ignore_errors=True)
        raise InventoryError(f"cannot build {args.dir}: {e}") from e
    vfs = sum(len(p.vf_addresses) for p in built.pfs)
    print(f"built {built.spec.hostname}: {len(built.pfs)} NICs, {vfs} VFs under {built.sysfs.root}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        if args.command == "fake-sysfs":
            _fake(args)
            return 0
        cfg = load_config(args.config)
        with _reader(args, cfg) as reader:
            if args.command == "list":
                _list(args, reader)
            elif args.command == "show":
                _show(args, reader)
            else:
                _watch(args, reader, cfg)
    except InventoryError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error worth a traceback
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
