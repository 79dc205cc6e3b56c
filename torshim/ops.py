"""The operator's commands that touch state: `serve`, `apply`, `release`, `show`, `audit`.

`apply`/`release` are the manual path: a connection with the id `manual:<switch>:<port>:<service>`,
counted like any pod's, so releasing it never removes a VLAN that pods on the port still use.
They, `show` and `audit` work on the same store file as a running `torshim serve` (SQLite WAL
lets them share it) and talk to the switches directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pydantic

from torshim.config import RegistryConfig, load_config, vlan_ranges
from torshim.errors import ConfigError, NotFoundError, ShimError
from torshim.leader import LeaderElector, LeaseAdapter, Leases, check_timing
from torshim.model import PortConfig
from torshim.service import Attachment, PortReport, Shim
from torshim.store import Store

log = logging.getLogger("torshim")


def port_text(p: PortConfig | None) -> str:
    if p is None:
        return "-"
    if p.mode == "access":
        return f"access {p.access_vlan if p.access_vlan is not None else 'default'}"
    if p.mode == "trunk":
        vlans = vlan_ranges(p.trunk_vlans) or "none"
        return f"trunk {vlans}" + (f" native {p.native_vlan}" if p.native_vlan else "")
    return "unmanaged"


def port_dict(p: PortConfig | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "mode": p.mode,
        "access_vlan": p.access_vlan,
        "native_vlan": p.native_vlan,
        "trunk_vlans": sorted(p.trunk_vlans),
    }


@contextmanager
def opened(args: argparse.Namespace) -> Iterator[Shim]:
    cfg = load_config(args.config)
    store = Store(cfg.store.path)
    shim = Shim(cfg, store)
    try:
        yield shim
    finally:
        shim.stop()
        store.close()


def manual_id(switch: str, port: str, service: str) -> str:
    return f"manual:{switch}:{port}:{service}"


# -- apply / release ------------------------------------------------------------------------------


def apply(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args) as shim:
        service = shim.config.service(args.service)
        att = Attachment(
            id=manual_id(args.switch, args.port, service.name),
            service=service.ref,
            node="manual",
            mode=args.mode,
            namespace=None,  # the operator: no namespace policy
            tor_switch=args.switch,
            tor_port=args.port,
        )
        grant = shim.request(att)
        conn = grant.connection
        return {
            "connection": conn.id,
            "switch": conn.switch,
            "port": conn.port,
            "service": service.ref,
            "vlan": service.vlan,
            "port_config": port_dict(grant.port_config),
            "changed": bool(grant.result and grant.result.changes),
            "users": shim.store.refcount(conn.switch, conn.port, service.name),
        }


def release(args: argparse.Namespace) -> dict[str, Any]:
    with opened(args) as shim:
        service = shim.config.service(args.service)
        cid = manual_id(args.switch, args.port, service.name)
        conn = shim.close(cid)
        if conn is None:
            users = shim.store.refcount(args.switch, args.port, service.name)
            raise NotFoundError(
                f"no manual attachment of {service.ref} on {args.switch} {args.port}"
                + (
                    f" ({users} pod connections use it there; they are closed by nsmgr)"
                    if users
                    else ""
                )
            )
        return {
            "connection": cid,
            "switch": conn.switch,
            "port": conn.port,
            "service": service.ref,
            "port_config": port_dict(shim.desired(conn.switch, conn.port)),
            "users": shim.store.refcount(conn.switch, conn.port, service.name),
        }


# -- show -----------------------------------------------------------------------------------------


def show(args: argparse.Namespace) -> dict[str, Any]:
    """The store as the shim sees it: connections with their addresses, and managed ports."""
    cfg = load_config(args.config)
    with Store(cfg.store.path) as store:
        leases = {(lease.service, lease.connection_id): lease.address for lease in store.leases()}
        conns = [
            {
                "id": c.id,
                "service": c.service,
                "switch": c.switch,
                "port": c.port,
                "node": c.node,
                "pf": c.pf,
                "vf": c.vf_pci,
                "mode": c.mode,
                "namespace": c.namespace,
                "address": leases.get((c.service, c.id)),
                "created": c.created,
            }
            for c in store.connections()
        ]
        refs = store.refcounts()
        shim = Shim(cfg, store)  # no switch is contacted: it computes desired configs only
        ports = []
        for switch, port in store.managed_ports():
            applied = store.applied(switch, port)
            shim_desired = _desired(shim, switch, port)
            ports.append(
                {
                    "switch": switch,
                    "port": port,
                    "desired": port_dict(shim_desired),
                    "applied": port_dict(applied.config if applied else None),
                    "applied_at": applied.applied_at if applied else None,
                    "in_sync": applied is not None and applied.config == shim_desired,
                    "users": {s: n for (sw, p, s), n in refs.items() if (sw, p) == (switch, port)},
                }
            )
    return {"connections": conns, "ports": ports}


def _desired(shim: Shim, switch: str, port: str) -> PortConfig | None:
    try:
        return shim.desired(switch, port)
    except ShimError:  # a switch or service gone from the config: show what is stored anyway
        return None


# -- audit ----------------------------------------------------------------------------------------

CLEAN = ("ok", "fixed")


def audit(args: argparse.Namespace, progress: Any = None) -> list[PortReport]:
    with opened(args) as shim:
        switches = [args.switch] if args.switch else shim.switches_to_check()
        for s in switches:
            shim.config.switch(s)  # NotFoundError before any session opens
        out: list[PortReport] = []
        for s in switches:
            if progress is not None:
                progress(f"auditing {s}")
            out.extend(shim.audit(s, fix=args.fix))
        return out


def report_dict(r: PortReport) -> dict[str, Any]:
    return {
        "switch": r.switch,
        "port": r.port,
        "status": r.status,
        "desired": port_dict(r.desired),
        "actual": port_dict(r.actual),
        "connections": r.connections,
        "detail": r.detail,
    }


# -- serve ----------------------------------------------------------------------------------------


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def elector(args: argparse.Namespace, leases: Leases | None = None) -> LeaderElector | None:
    """The leader elector `serve`'s flags ask for (None without --leader-elect). The holder is
    $POD_NAME (else the host name), the namespace --lease-namespace, else $POD_NAMESPACE."""
    if not args.leader_elect:
        return None
    if not args.lease_name:
        raise ConfigError("--leader-elect needs --lease-name")
    namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE")
    if not namespace:
        raise ConfigError(
            "--leader-elect: no namespace for the Lease: set POD_NAMESPACE or --lease-namespace"
        )
    check_timing(args.lease_duration, args.renew_every)  # before any credentials are read
    if leases is None:
        timeout = max(1.0, args.renew_every / 2)  # a hung call must not outlast the deadline
        leases = LeaseAdapter(namespace, kubeconfig=args.kubeconfig, timeout=timeout)
    return LeaderElector(
        leases,
        args.lease_name,
        os.environ.get("POD_NAME") or socket.gethostname(),
        duration=args.lease_duration,
        renew_every=args.renew_every,
    )


def serve(args: argparse.Namespace) -> int:
    from torshim.daemon import Daemon

    el = elector(args)
    setup_logging(args.log_level, args.log_format)
    cfg = load_config(args.config)
    if args.advertise:
        try:
            reg = RegistryConfig(
                url=cfg.registry.url, advertise=args.advertise, ttl=cfg.registry.ttl
            )
        except pydantic.ValidationError as e:
            raise ConfigError(f"--advertise: {e.errors()[0]['msg']}") from None
        cfg = cfg.model_copy(update={"registry": reg})
    daemon = Daemon(cfg, listen=args.listen, metrics=args.metrics, elector=el)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        daemon._stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        daemon.start()
        if daemon.http is not None:
            log.info("metrics and readiness on port %d", daemon.http.port)
        daemon.wait()
    finally:
        t = time.monotonic()
        daemon.stop()
        log.info("stopped in %.2f s", time.monotonic() - t)
    if daemon.lost:
        log.error("exiting: no longer the leader (restarting as a standby)")
        return 1
    return 0
