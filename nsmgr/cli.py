"""`nsmgr`: the node's network service manager. `serve` runs the agent; `request`, `close` and
`list` drive a running one over its socket (the NSM API, as any NSM client would)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from nicinventory.logs import setup_logging
from nsmgr.config import DEFAULT_CONFIG, DEFAULT_SOCKET, load_config
from nsmgr.errors import NsmgrError
from nsmgr.model import ConnectionInfo, PodRef, RequestError

PROG = "nsmgr"
FORMATS = ("table", "json", "yaml")
# the server's refusals of a request are the user's input: exit 2 like any bad input
_REFUSALS = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "PERMISSION_DENIED")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    p.add_argument(
        "--socket", default=DEFAULT_SOCKET, help=f"the agent's socket (default {DEFAULT_SOCKET})"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the agent")
    s.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")

    c = sub.add_parser("check-config", help="validate a config file and print it")
    c.add_argument("--config", required=True, metavar="FILE")
    c.add_argument("-o", "--output", choices=("json", "yaml"), default="yaml")

    r = sub.add_parser("request", help="put a VF into a network namespace for a service")
    r.add_argument("--service", required=True, help="myns.example.com[@domain]")
    r.add_argument("--device", required=True, metavar="PCI", help="the VF, e.g. 0000:3b:01.2")
    r.add_argument("--netns", required=True, help="a path, a pid, or a name under /run/netns")
    r.add_argument("--ifname", default="nsm0", help="its name in there (default nsm0)")
    r.add_argument("--id", default="", help="connection id (default: the agent makes one)")
    r.add_argument("--mechanism", choices=["kernel", "vfio"], help="default: the VF's driver's")
    r.add_argument("--pod", metavar="NS/NAME[/UID]", help="the pod this is for")
    r.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("-o", "--output", choices=FORMATS, default="table")

    x = sub.add_parser("close", help="end a connection: the VF goes back as it was")
    x.add_argument("id")
    x.add_argument("--generation", type=int, help="refuse if the VF was attached again since")

    ls = sub.add_parser("list", help="the agent's connections")
    ls.add_argument("-o", "--output", choices=FORMATS, default="table")
    return p


# -- output ---------------------------------------------------------------------------------------
def info_dict(info: ConnectionInfo) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": info.id,
        "service": info.service,
        "device": info.pci_address,
        "state": info.state,
        "mechanism": info.mechanism,
        "ifname": info.ifname or None,
        "netns": info.netns,
        "netns_inode": info.netns_inode,
        "pod": None,
        "pf": info.pf,
        "vf_index": info.vf_index,
        "vlan": info.vlan,
        "mtu": info.mtu,
        "mac": info.mac or None,
        "addresses": list(info.addresses),
        "routes": list(info.routes),
        "dns": {"servers": list(info.dns_servers), "search": list(info.dns_search)},
        "endpoint": info.endpoint,
        "pf_side": info.pf_status,
        "generation": info.generation,
        "labels": dict(info.labels),
        "error": info.error or None,
    }
    if info.pod is not None:
        d["pod"] = {"namespace": info.pod.namespace, "name": info.pod.name, "uid": info.pod.uid}
    return d


def _print(doc: Any, fmt: str) -> None:
    from nicinventory.render import dump  # the same JSON/YAML look as the other CLIs

    dump(doc, fmt, sys.stdout)


def _table(infos: list[ConnectionInfo], title: str) -> None:
    from nicinventory.render import Table, console

    t = Table(title=title, title_justify="left")
    for col in ("ID", "SERVICE", "DEVICE", "IFNAME", "NETNS", "POD", "STATE", "VLAN", "MTU"):
        t.add_column(col, no_wrap=True)
    t.add_column("ADDRESSES")
    for i in infos:
        pod = f"{i.pod.namespace}/{i.pod.name}" if i.pod else "-"
        state = i.state + (f" ({i.error})" if i.error else "")
        ifname = i.ifname or i.mechanism
        t.add_row(
            i.id, i.service, i.pci_address, ifname, i.netns, pod, state,
            str(i.vlan or "-"), str(i.mtu or "-"), ", ".join(i.addresses) or "-",
        )  # fmt: skip
    console().print(t)


# -- client commands ------------------------------------------------------------------------------
class ClientError(Exception):
    """The agent refused (exit 2) or could not be reached (exit 1); the message is one line."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _stubs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    import grpc

    from sriov_nsm_wire.networkservice import networkservice_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel("unix:" + args.socket)
    return channel, pb_grpc.NetworkServiceStub(channel), pb_grpc.MonitorConnectionStub(channel)


def _rpc(args: argparse.Namespace, call: Any) -> Any:
    import grpc

    try:
        return call()
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise ClientError(f"cannot reach nsmgr at {args.socket}: is it running?", 1) from None
        details = " ".join((e.details() or code.name).split())
        raise ClientError(details, 2 if code.name in _REFUSALS else 1) from None


def _request(args: argparse.Namespace) -> None:
    from nsmgr.netns import netns_path
    from nsmgr.server import info_from_proto
    from sriov_nsm_wire.networkservice import networkservice_pb2 as pb

    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RequestError(f"--label {item!r} is not KEY=VALUE")
        labels[key] = value
    if args.pod:
        parts = args.pod.split("/")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise RequestError(f"--pod {args.pod!r} is not NAMESPACE/NAME[/UID]")
        pod = PodRef(parts[0], parts[1], parts[2] if len(parts) == 3 else "")
        labels.update(podNamespace=pod.namespace, podName=pod.name, podUID=pod.uid)
    mech = pb.Mechanism(
        cls="LOCAL",
        type=(args.mechanism or "").upper(),
        parameters={
            "pciAddress": args.device,
            "name": args.ifname,
            "netnsURL": netns_path(args.netns),
        },
    )
    req = pb.NetworkServiceRequest(
        connection=pb.Connection(id=args.id, network_service=args.service, labels=labels),
        mechanism_preferences=[mech],
    )
    channel, ns, _ = _stubs(args)
    with channel:
        conn = _rpc(args, lambda: ns.Request(req, timeout=args.timeout))
    info = info_from_proto(conn)
    if args.output != "table":
        _print(info_dict(info), args.output)
    else:
        _table([info], f"connection {info.id} (generation {info.generation})")


def _close(args: argparse.Namespace) -> None:
    from sriov_nsm_wire.networkservice import networkservice_pb2 as pb

    conn = pb.Connection(id=args.id)
    if args.generation is not None:
        conn.path.path_segments.add(id=args.id, metrics={"generation": str(args.generation)})
    channel, ns, _ = _stubs(args)
    with channel:
        _rpc(args, lambda: ns.Close(conn, timeout=args.timeout))
    print(f"closed {args.id}", file=sys.stderr)


def _list(args: argparse.Namespace) -> None:
    from nsmgr.server import info_from_proto
    from sriov_nsm_wire.networkservice import networkservice_pb2 as pb

    channel, _, mon = _stubs(args)
    with channel:

        def first() -> Any:
            stream = mon.MonitorConnections(pb.MonitorScopeSelector(), timeout=args.timeout)
            try:
                return next(stream)  # INITIAL_STATE_TRANSFER: every connection now
            finally:
                stream.cancel()

        event = _rpc(args, first)
    infos = sorted(
        (info_from_proto(c) for c in event.connections.values()),
        key=lambda i: (i.pci_address, i.id),
    )
    if args.output != "table":
        _print({"connections": [info_dict(i) for i in infos]}, args.output)
    else:
        _table(infos, f"{len(infos)} connections")


# -- serve ----------------------------------------------------------------------------------------
def _serve(args: argparse.Namespace) -> int:
    from nsmgr.daemon import serve

    cfg = load_config(args.config)
    stop = threading.Event()
    # flags only: the main loop notices, and everything stops in order (socket, then agent)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return serve(cfg, stop=stop, pods=_start_pods if cfg.pods is not None else None)


def _start_pods(agent: Any, cfg: Any) -> Any:
    from nsmgr.pods import start_pod_integration

    return start_pod_integration(agent, cfg.pods)


def _check_config(args: argparse.Namespace) -> None:
    cfg = load_config(args.config)
    _print(cfg.model_dump(mode="json"), args.output)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "serve":
            return _serve(args)
        {"request": _request, "close": _close, "list": _list, "check-config": _check_config}[
            args.command
        ](args)
    except (NsmgrError, RequestError, OSError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except ClientError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not worth a traceback
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
