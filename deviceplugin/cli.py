"""`sriov-device-plugin`: SR-IOV VF pools as kubelet resources (a drop-in for the SR-IOV network
device plugin: same config file, env vars and device-info files) and `pools` to see who gets what."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

from deviceplugin.config import DEFAULT_PREFIX, load_config
from deviceplugin.state import PoolStates
from deviceplugin.types import DevicePluginError
from nicinventory.errors import InventoryError
from nicinventory.logs import setup_logging
from nicinventory.sysfs import SysfsReader

PROG = "sriov-device-plugin"
FORMATS = ("table", "json", "yaml")
DEFAULT_CONFIG = "/etc/pcidp/config.json"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    p.add_argument(
        "--config-file", default=DEFAULT_CONFIG, help=f"pools (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--sysfs-root", default="/sys")
    p.add_argument("--resource-prefix", default=DEFAULT_PREFIX, help="for pools that give none")
    p.add_argument("--kubelet-dir", default="/var/lib/kubelet/device-plugins")
    p.add_argument("--plugins-registry-dir", default="/var/lib/kubelet/plugins_registry")
    p.add_argument("--pod-resources-socket", default="/var/lib/kubelet/pod-resources/kubelet.sock")
    p.add_argument("--device-info-dir", default="/var/run/k8s.cni.cncf.io/devinfo/dp")
    p.add_argument("--cdi-dir", default=None, help="write CDI specs here and answer cdi_devices")
    p.add_argument("--dev-root", default="/dev", help="where device nodes are checked")
    p.add_argument("--resync-period", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--metrics-address", default="0.0.0.0")
    p.add_argument("--metrics-port", type=int, default=9101, help="0 turns /metrics off")
    p.add_argument("--no-events", action="store_true", help="no udev/netlink (resync only)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    pools = sub.add_parser("pools", help="each pool with its VFs, and why other VFs are in none")
    pools.add_argument("-o", "--output", choices=FORMATS, default="table")
    # also after `pools` (`pools --config-file F`, as documented); SUPPRESS keeps the values
    # given before it when they are not repeated here
    for flag in ("--config-file", "--sysfs-root", "--resource-prefix"):
        pools.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _pools_doc(states: PoolStates) -> dict[str, Any]:
    pools = []
    for name, spec in states.specs.items():
        devs = states.known_devices(name)
        pools.append(
            {
                "resource": name,
                "origin": spec.origin,
                "shared": not spec.exclusive,
                "devices": [
                    {
                        "id": s.id,
                        "pf": devs[s.id].pf_ifname or devs[s.id].pf_pci_address,
                        "vf_index": devs[s.id].vf_index,
                        "driver": devs[s.id].driver,
                        "numa_node": s.numa_node,
                        "health": "Healthy" if s.healthy else "Unhealthy",
                        "reason": s.reason or None,
                    }
                    for s in states.device_states(name)
                ],
            }
        )
    unpooled = [
        {"id": addr, "reasons": [{"resource": r, "reason": why} for r, why in reasons]}
        for addr, reasons in sorted(states.assignment.unpooled.items())
    ]
    return {"pools": pools, "unpooled": unpooled}


def _print_pools(doc: dict[str, Any]) -> None:
    from nicinventory.render import Table, console  # rich: only this command needs it

    c = console()
    for pool in doc["pools"]:
        t = Table(
            title=f"{pool['resource']}  ({len(pool['devices'])} VFs, {pool['origin']}"
            f"{', shared' if pool['shared'] else ''})",
            title_justify="left",
        )
        for col in ("DEVICE", "PF", "VF", "DRIVER", "NUMA", "HEALTH"):
            t.add_column(col, no_wrap=True)
        for d in pool["devices"]:
            health = d["health"] + (f" ({d['reason']})" if d["reason"] else "")
            t.add_row(
                d["id"],
                str(d["pf"]),
                str(d["vf_index"]),
                str(d["driver"] or "-"),
                "-" if d["numa_node"] is None else str(d["numa_node"]),
                health,
            )
        c.print(t)
    if doc["unpooled"]:
        t = Table(title=f"in no pool ({len(doc['unpooled'])} VFs)", title_justify="left")
        t.add_column("DEVICE", no_wrap=True)
        t.add_column("WHY NOT")
        for u in doc["unpooled"]:
            t.add_row(u["id"], "\n".join(f"{r['resource']}: {r['reason']}" for r in u["reasons"]))
        c.print(t)


def _pools(args: argparse.Namespace) -> None:
    specs = load_config(args.config_file, args.resource_prefix)
    reader = SysfsReader(args.sysfs_root)
    states = PoolStates()
    states.update(specs, reader.scan())
    doc = _pools_doc(states)
    if args.output == "table":
        _print_pools(doc)
    else:
        from nicinventory.render import dump

        dump(doc, args.output, sys.stdout)


def _release_startup_garbage() -> None:
    """Start-up (pydantic building its models, the first scan) leaves freed heap behind; give it
    back to the OS so a long-running daemon's RSS is what it uses (about 0.7 MB here)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _serve(args: argparse.Namespace) -> int:
    from deviceplugin.manager import DevicePluginManager, Options
    from nicinventory.events import EventSource, NetlinkSource, UdevSource
    from nicinventory.httpendpoints import MetricsServer

    def sources() -> list[EventSource]:
        return [] if args.no_events else [UdevSource(), NetlinkSource()]

    opts = Options(
        config_file=args.config_file,
        sysfs_root=args.sysfs_root,
        kubelet_dir=args.kubelet_dir,
        registry_dir=args.plugins_registry_dir,
        pod_resources_socket=args.pod_resources_socket,
        device_info_dir=args.device_info_dir or None,
        cdi_dir=args.cdi_dir,
        dev_root=args.dev_root,
        resync_period=args.resync_period,
        resource_prefix=args.resource_prefix,
        event_sources=sources,
    )
    manager = DevicePluginManager(opts)
    log = logging.getLogger(PROG)
    metrics_server = None
    # Before start(): registering takes a while, and SIGHUP's or SIGTERM's default action would
    # kill the process meanwhile (leaving its sockets). Both handlers only set flags.
    signal.signal(signal.SIGHUP, lambda *_: manager.request_reload())
    signal.signal(signal.SIGTERM, lambda *_: manager.request_stop())
    started = False
    try:
        manager.start()
        started = True
        _release_startup_garbage()
        if args.metrics_port:
            metrics_server = MetricsServer(
                args.metrics_address, args.metrics_port, lambda: manager.ready
            )
            metrics_server.start()
        log.info("serving %d pools: %s", len(manager.servers), ", ".join(sorted(manager.servers)))
        manager.run()
    finally:
        manager.stop()
        if metrics_server:
            metrics_server.stop()
        if started:  # a bad config at start is one error line, not this too
            log.info("stopped; sockets removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "pools":
            _pools(args)
            return 0
        return _serve(args)
    except (DevicePluginError, InventoryError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
