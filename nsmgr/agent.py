"""The node agent: turns "this pod got VF 0000:3b:01.2 and asks for myns.example.com" into a
configured interface inside the pod, and puts the VF back exactly as it was when the connection
ends, whatever happened in between.

Every request is validated before anything changes (RequestError with one line). Then, under the
VF's lock, each step is journaled before it runs:

    attach:endpoint  original state recorded; the service's endpoint gives the context
    attach:pf        PF-side settings (only when the context asks for any)
    attach:move      the netdev moves into the pod under its new name (one netlink message)
    attach:configure MTU, MAC, addresses, up, routes
    attached
    detach:pf        PF-side settings back (only when some were applied)
    detach:netns     inside the pod: down, MAC, MTU, stale altnames; back out under its old name
    detach:host      on the node: fix what is left, read back, verify; the endpoint is told
    free             (the record keeps the VF's generation)

A failed attach is rolled back through the detach steps. On start, `replay()` rolls back every
half-done attach, finishes every half-done detach, and detaches connections whose pod namespace
is gone; `reconcile()` (also periodic) does the last two again and retries pending restores.

The pod's namespace fd is held while the connection lives: the namespace then cannot vanish with
the VF inside (or hand it to the initial namespace), and a Close always finds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict

from nsmgr import metrics, plumbing
from nsmgr.config import NsmgrConfig
from nsmgr.endpoint import EndpointClient, LocalServices
from nsmgr.errors import (
    ConfigError,
    ConflictError,
    EndpointError,
    JournalError,
    NotFoundError,
    NsmgrError,
    PfSideError,
    RestoreError,
    StoppingError,
)
from nsmgr.journal import ATTACH_PHASES, ATTACHED, DETACH_PHASES, Journal, VfRecord
from nsmgr.model import AttachRequest, ConnectionInfo, RequestError
from nsmgr.netlink import Rtnl
from nsmgr.netns import HeldNamespaces, NetnsId, netns_id, open_netns, still_there
from nsmgr.pfside import NetlinkPfSide, NoPfSide, PfSide, pf_differences, restore_changes
from nsmgr.vfstate import VFIO_DRIVER, HostLink, VfLocation, VfOriginal, locate_vf

log = logging.getLogger("nsmgr.agent")
KERNEL, VFIO = "KERNEL", "VFIO"
MECHANISMS = (KERNEL, VFIO)
Listener = Callable[[str, ConnectionInfo], None]  # ("UPDATE" | "DELETE", connection)


class Agent:
    """model.ConnectionAgent over the journal, the node's namespace, a PF side and an endpoint."""

    def __init__(
        self,
        cfg: NsmgrConfig,
        endpoint: EndpointClient | None = None,
        pf_side: PfSide | None = None,
    ) -> None:
        self.cfg = cfg
        self.journal = Journal(cfg.state_dir)
        self.node = plumbing.Node(cfg.node_netns)
        if pf_side is None:
            pf_side = NetlinkPfSide(self.node.rtnl) if cfg.pf_side == "netlink" else NoPfSide()
        self.pf = pf_side
        self.endpoint: EndpointClient = endpoint or _endpoint_client(cfg)
        self.ready = False
        self._records: dict[str, VfRecord] = {}  # pci -> record, as journaled
        self._by_conn: dict[str, str] = {}  # connection id -> pci
        self._pods = HeldNamespaces()  # pci -> its connection's namespace, held open
        self._failed: dict[str, str] = {}  # pci -> why an attached connection is not as made
        self._quarantined: dict[str, str] = {}  # pci -> why its record cannot be trusted
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()  # guards the dicts above; never held across I/O
        self._inflight = 0  # requests and closes running; stop() waits for them
        self._stopping = False
        self._settled = threading.Condition(self._lock)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Hold the state dir, replay the journal, reconcile; then the agent is ready."""
        self.journal.lock_agent()
        try:
            self.replay()
            self.reconcile()
        except BaseException:
            self.journal.unlock_agent()
            raise
        self.ready = True

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let running ones finish (up to `timeout`), then let go of
        everything held. Connections stay: their records make the next start pick them up (a
        restart is not a detach)."""
        self.ready = False
        with self._lock:
            if self._stopping:
                return  # stopped before: everything is let go already
            self._stopping = True
            if not self._settled.wait_for(lambda: self._inflight == 0, timeout):
                log.warning("stopping with %d operations still running", self._inflight)
        self._pods.close_all()
        self.node.close()
        self.journal.unlock_agent()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, kind: str, info: ConnectionInfo) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(kind, info)
            except Exception:  # a listener's bug must not fail the operation
                log.exception("connection listener failed")
        self._update_gauge()

    def _update_gauge(self) -> None:
        counts: dict[str, int] = {}
        for info in self.connections():
            counts[info.state] = counts.get(info.state, 0) + 1
        metrics.set_connections(counts)

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        with self._lock:
            if self._stopping:
                raise StoppingError("nsmgr is stopping: try again once it is back")
            self._inflight += 1
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                if not self._inflight:
                    self._settled.notify_all()

    # -- the API ----------------------------------------------------------------------------------
    def request(self, req: AttachRequest, mechanism: str | None = None) -> ConnectionInfo:
        """Attach (or, for a known connection id with the same target, return it again)."""
        start, result = time.monotonic(), "error"
        try:
            with self._operation():
                info = self._request(req, mechanism)
            result = "ok"
            return info
        except RequestError:
            result = "refused"
            raise
        finally:
            metrics.observe("request", result, time.monotonic() - start)

    def close(self, connection_id: str, generation: int | None = None) -> None:
        """Detach. A `generation` other than the connection's current one is refused, so a late
        Close can never reset a VF that was attached again since."""
        start, result = time.monotonic(), "error"
        try:
            with self._operation():
                self._close(connection_id, generation)
            result = "ok"
        except RequestError:
            result = "refused"
            raise
        finally:
            metrics.observe("close", result, time.monotonic() - start)

    def connections(self) -> list[ConnectionInfo]:
        with self._lock:
            recs = [r for r in self._records.values() if r.busy and r.connection_id]
        return sorted((self._info(r) for r in recs), key=lambda i: (i.pci_address, i.id))

    def connection(self, connection_id: str) -> ConnectionInfo:
        with self._lock:
            pci = self._by_conn.get(connection_id)
            rec = self._records.get(pci) if pci else None
        if rec is None:
            raise NotFoundError(f"no connection {connection_id!r} on this node")
        return self._info(rec)

    # -- request ----------------------------------------------------------------------------------
    def _request(self, req: AttachRequest, mechanism: str | None) -> ConnectionInfo:
        req.validate()
        if mechanism is not None and mechanism not in MECHANISMS:
            raise RequestError(f"mechanism {mechanism!r} is not KERNEL or VFIO")
        loc = locate_vf(self.cfg.sysfs_root, req.pci_address)
        pci = loc.pci_address
        pod_fd = open_netns(req.netns)
        keep = False
        try:
            self.endpoint.check(req.service, req.pod)
            nsid = netns_id(pod_fd)
            with self.journal.vf_lock(pci):
                if pci in self._quarantined:
                    raise ConflictError(f"device {pci} is quarantined: {self._quarantined[pci]}")
                existing = self._records.get(pci)
                if existing is not None and existing.busy:
                    return self._again(existing, req, nsid)
                conn_id = req.connection_id or str(uuid.uuid4())
                with self._lock:
                    other = self._by_conn.get(conn_id)
                    if other is not None:
                        raise ConflictError(f"connection id {conn_id} is already used for {other}")
                    self._by_conn[conn_id] = pci
                try:
                    info = self._attach(req, loc, conn_id, pod_fd, nsid, mechanism, existing)
                except BaseException:
                    with self._lock:
                        rec = self._records.get(pci)
                        if rec is None or not rec.busy or rec.connection_id != conn_id:
                            self._by_conn.pop(conn_id, None)
                    raise
                keep = True
                return info
        finally:
            if not keep and not self._pods.holds(pod_fd):
                os.close(pod_fd)

    def _again(self, rec: VfRecord, req: AttachRequest, nsid: NetnsId) -> ConnectionInfo:
        """The VF is held: the same connection asked again, or a conflict."""
        if req.connection_id and rec.connection_id == req.connection_id:
            same = (rec.netns_inode, rec.ifname or req.ifname) == (nsid.url, req.ifname)
            if rec.phase == ATTACHED and same:
                return self._info(rec)
            if rec.phase == ATTACHED:
                raise ConflictError(
                    f"connection {rec.connection_id} exists for another namespace or interface "
                    "name: close it first"
                )
        raise ConflictError(self._held_by(rec))

    @staticmethod
    def _held_by(rec: VfRecord) -> str:
        pod = rec.pod
        who = f"pod {pod['namespace']}/{pod['name']}" if pod else f"netns {rec.netns}"
        if rec.phase == ATTACHED:
            return f"device {rec.pci_address} is held by connection {rec.connection_id} ({who})"
        why = f": {rec.error}" if rec.error else ""
        return f"device {rec.pci_address} is being restored ({rec.phase}){why}"

    def _attach(
        self,
        req: AttachRequest,
        loc: VfLocation,
        conn_id: str,
        pod_fd: int,
        nsid: NetnsId,
        mechanism: str | None,
        previous: VfRecord | None,
    ) -> ConnectionInfo:
        pci = loc.pci_address
        if loc.driver == VFIO_DRIVER:
            mech = VFIO
        elif loc.ifname:
            mech = KERNEL
        else:
            raise ConflictError(
                f"VF {pci} has no netdev and is not bound to vfio-pci "
                f"(driver: {loc.driver or 'none'})"
            )
        if mechanism is not None and mechanism != mech:
            what = "bound to vfio-pci" if mech == VFIO else "a kernel netdev"
            raise RequestError(f"VF {pci} is {what}: mechanism {mechanism} does not apply")
        with contextlib.ExitStack() as stack:
            pod_rt = stack.enter_context(Rtnl(pod_fd)) if mech == KERNEL else None
            return self._attach_vf(req, loc, conn_id, pod_fd, pod_rt, nsid, mech, previous)

    def _attach_vf(
        self,
        req: AttachRequest,
        loc: VfLocation,
        conn_id: str,
        pod_fd: int,
        pod_rt: Rtnl | None,
        nsid: NetnsId,
        mech: str,
        previous: VfRecord | None,
    ) -> ConnectionInfo:
        pci = loc.pci_address
        host = None
        if pod_rt is not None:
            with self.node.rtnl() as rt:
                link = rt.get_link(name=loc.ifname or "")
            if link is None or (link.parent_dev and link.parent_dev != pci):
                raise ConflictError(
                    f"VF {pci}'s netdev {loc.ifname} is not in the node's network namespace "
                    "(another pod or tool holds it?)"
                )
            host = HostLink.of(link)
            if pod_rt.get_link(name=req.ifname) is not None:  # the move checks it too, later
                raise ConflictError(
                    f"interface name {req.ifname} already exists in the pod's network namespace"
                )
        original = VfOriginal(
            pci_address=pci,
            pf_pci=loc.pf_pci,
            pf_ifname=loc.pf_ifname,
            vf_index=loc.vf_index,
            driver=loc.driver,
            netdev=host,
            pf=self.pf.read(loc.pf_ifname, loc.vf_index),
        )
        rec = VfRecord(
            pci_address=pci,
            generation=(previous.generation if previous else 0) + 1,
            phase="attach:endpoint",
            connection_id=conn_id,
            service=str(req.service),
            netns=req.netns,
            netns_inode=nsid.url,
            ifname=req.ifname if mech == KERNEL else "",
            mechanism=mech,
            pod=asdict(req.pod) if req.pod else None,
            labels=dict(req.labels),
            original=original,
        )
        self._write(rec)  # from here on, a crash is rolled back on restart
        try:
            self._attach_steps(rec, pod_fd, pod_rt)
        except Exception as e:  # not BaseException: a kill mid-attach is a crash, replay undoes it
            log.warning("attach of %s for %s failed, rolling back: %s", pci, conn_id, e)
            if not self._rollback(rec, pod_fd):
                self._pods.hold(pci, pod_fd)  # the VF may still be in there: keep it for retries
            raise
        self._pods.hold(pci, pod_fd)
        info = self._info(rec)
        log.info(
            "attached %s as %s in %s for %s (connection %s, generation %d)",
            pci, rec.ifname or "vfio", rec.netns, rec.service, conn_id, rec.generation,
        )  # fmt: skip
        self._emit("UPDATE", info)
        return info

    def _attach_steps(self, rec: VfRecord, pod_fd: int, pod_rt: Rtnl | None) -> None:
        orig = rec.original
        assert orig is not None
        ctx = self.endpoint.request(rec.endpoint_request(self.cfg.node_name))
        rec.context = ctx
        changes = ctx.vf.changes()
        if changes and self.pf.name != "none" and orig.pf is None:
            raise PfSideError(
                f"PF {orig.pf_ifname} reports no settings for VF {orig.vf_index} "
                f"(no IFLA_VFINFO_LIST), so they cannot be recorded: "
                f"{', '.join(s for s, _ in changes)} not changed"
            )
        if changes:
            rec.phase = "attach:pf"
            rec.pf_applied = [s for s, _ in changes]  # intent: a crash mid-way restores them all
            self._write(rec)
            result = self.pf.apply(orig.pf_ifname, orig.vf_index, changes)
            rec.pf_status, rec.pf_applied = result.status, list(result.applied)
            if result.status == "skipped":
                log.warning("VF %s: %s", rec.pci_address, result.reason)
            result.raise_for_status()
        else:
            rec.pf_status = "nothing"
        if rec.mechanism != KERNEL:
            rec.phase = ATTACHED
            self._write(rec)
            return
        assert orig.netdev is not None
        if ctx.vf.mac and "mac" not in rec.pf_applied:
            rec.netdev_mac = ctx.vf.mac  # the PF did not set it: set it on the netdev itself
        rec.phase = "attach:move"
        self._write(rec)
        plumbing.move_in(self.node, orig.netdev, pod_fd, rec.ifname)
        rec.phase = "attach:configure"
        self._write(rec)
        assert pod_rt is not None
        rec.pod_ifindex = plumbing.configure(pod_rt, rec.ifname, ctx, rec.netdev_mac)
        rec.phase = ATTACHED
        self._write(rec)

    def _rollback(self, rec: VfRecord, pod_fd: int | None) -> bool:
        """Undo a failed attach; False when the VF could not be put back (its record stays, and
        reconcile tries again)."""
        try:
            self._detach(rec, pod_fd, own_fd=False)
        except Exception as e:
            metrics.RESTORES.labels("rollback", "error").inc()
            log.error("rollback of %s failed, will retry: %s", rec.pci_address, e)
            return False
        metrics.RESTORES.labels("rollback", "ok").inc()
        return True

    # -- close ------------------------------------------------------------------------------------
    def _close(self, connection_id: str, generation: int | None) -> None:
        with self._lock:
            pci = self._by_conn.get(connection_id)
        if pci is None:
            raise NotFoundError(f"no connection {connection_id!r} on this node")
        with self.journal.vf_lock(pci):
            rec = self._records.get(pci)
            if rec is None or not rec.busy or rec.connection_id != connection_id:
                raise NotFoundError(f"no connection {connection_id!r} on this node")
            if generation is not None and generation != rec.generation:
                raise ConflictError(
                    f"connection {connection_id} generation {generation} is stale: device {pci} "
                    f"is at generation {rec.generation}"
                )
            self._detach(rec, self._pods.reopen(rec.pci_address, rec.netns, rec.netns_inode))
        log.info("detached %s (connection %s)", pci, connection_id)

    # -- detach: from any phase -------------------------------------------------------------------
    def _detach(self, rec: VfRecord, pod_fd: int | None, own_fd: bool = True) -> None:
        """Put the VF back and free its record; the steps are journaled like an attach's.
        RestoreError (record kept, with the reason) when it cannot be put back exactly."""
        orig = rec.original
        info = self._info(rec) if rec.phase == ATTACHED else None
        try:
            if orig is not None:
                self._restore(rec, orig, pod_fd)
            self.endpoint.close(rec.endpoint_request(self.cfg.node_name))
        except (NsmgrError, OSError) as e:
            rec.error = str(e)
            with contextlib.suppress(JournalError):
                self._write(rec)
            if isinstance(e, RestoreError | EndpointError | PfSideError | JournalError):
                raise
            raise RestoreError(f"VF {rec.pci_address}: {e}") from e
        freed = rec.freed()
        self._write(freed)
        with self._lock:
            self._by_conn.pop(rec.connection_id, None)
            self._failed.pop(rec.pci_address, None)
        if own_fd:
            self._pods.release(rec.pci_address)
        if info is not None:
            self._emit("DELETE", info)
        else:
            self._update_gauge()

    def _restore(self, rec: VfRecord, orig: VfOriginal, pod_fd: int | None) -> None:
        if rec.pf_applied and orig.pf is not None:
            rec.phase = "detach:pf"
            self._write(rec)
            result = self.pf.apply(
                orig.pf_ifname, orig.vf_index, restore_changes(orig.pf, rec.pf_applied)
            )
            if result.status == "refused":
                raise RestoreError(f"VF {rec.pci_address}: {result.reason}")
            now = self.pf.read(orig.pf_ifname, orig.vf_index)
            diffs = pf_differences(orig.pf, now, rec.pf_applied) if now is not None else []
            if diffs:
                raise RestoreError(f"VF {rec.pci_address}: its PF reports {'; '.join(diffs)}")
            rec.pf_applied = []
        if rec.mechanism == KERNEL and orig.netdev is not None:
            macs = {m for m in (rec.netdev_mac, rec.context.vf.mac if rec.context else None) if m}
            rec.phase = "detach:netns"
            self._write(rec)
            if pod_fd is not None:
                plumbing.return_from_pod(
                    self.node, rec.pci_address, orig.netdev, macs, pod_fd, rec.ifname,
                    rec.pod_ifindex,
                )  # fmt: skip
            rec.phase = "detach:host"
            self._write(rec)
            outcome = plumbing.restore_on_node(
                self.node, rec.pci_address, orig.netdev, macs, rec.ifname, self.cfg.sysfs_root,
                self.node.init_fd,
            )  # fmt: skip
            if outcome == "gone":
                log.warning("VF %s left the node: nothing to restore", rec.pci_address)
        else:
            rec.phase = "detach:host"
            self._write(rec)

    # -- replay and reconcile ---------------------------------------------------------------------
    def replay(self) -> None:
        """Load the journal and bring every VF to a settled state (see the module doc)."""
        records, problems = self.journal.read_all()
        for pci, line in problems:
            log.error("journal: %s: the VF is quarantined until the record is fixed", line)
            self._quarantined[pci] = line
        with self._lock:
            self._records = dict(records)
            self._by_conn = {r.connection_id: p for p, r in records.items() if r.busy}
        for rec in records.values():  # leases first: nothing below may lease over them
            if rec.phase == ATTACHED and rec.context is not None:
                try:
                    self.endpoint.restore(rec.endpoint_request(self.cfg.node_name), rec.context)
                except (NsmgrError, RequestError) as e:
                    self._failed[rec.pci_address] = str(e)
                    log.error("connection %s: %s", rec.connection_id, e)
        for pci, rec in sorted(records.items()):
            if not rec.busy:
                continue
            with self.journal.vf_lock(pci):
                if rec.phase in ATTACH_PHASES:
                    self._settle(rec, "replay-rollback", f"rolling back its {rec.phase}")
                elif rec.phase in DETACH_PHASES:
                    self._settle(rec, "replay-finish", f"finishing its {rec.phase}")
                else:
                    fd = self._pods.reopen(rec.pci_address, rec.netns, rec.netns_inode)
                    if fd is None:
                        self._settle(rec, "pod-gone", "its pod's network namespace is gone")

    def reconcile(self) -> None:
        """Detach connections whose pod namespace is gone, retry pending restores, and mark
        attached VFs that are no longer where they were put."""
        with self._lock:
            pcis = [p for p, r in self._records.items() if r.busy]
        for pci in pcis:
            with self.journal.vf_lock(pci):
                rec = self._records.get(pci)
                if rec is None or not rec.busy:
                    continue
                if rec.phase != ATTACHED:
                    self._settle(rec, "retry", f"retrying its {rec.phase}")
                elif not still_there(rec.netns, rec.netns_inode):
                    self._settle(rec, "pod-gone", "its pod's network namespace is gone")
                else:
                    self._check_attached(rec)

    def _settle(self, rec: VfRecord, trigger: str, why: str) -> None:
        log.info("VF %s (connection %s): %s", rec.pci_address, rec.connection_id, why)
        try:
            self._detach(rec, self._pods.reopen(rec.pci_address, rec.netns, rec.netns_inode))
            metrics.RESTORES.labels(trigger, "ok").inc()
        except (NsmgrError, OSError) as e:
            metrics.RESTORES.labels(trigger, "error").inc()
            log.error("VF %s stays pending: %s", rec.pci_address, e)

    def _check_attached(self, rec: VfRecord) -> None:
        problem = ""
        fd = self._pods.reopen(rec.pci_address, rec.netns, rec.netns_inode)
        if rec.mechanism == KERNEL and fd is not None:
            with Rtnl(fd) as rt:
                link = rt.get_link(name=rec.ifname)
            if link is None:
                problem = f"{rec.ifname} is no longer in the pod's network namespace"
        with self._lock:
            before = self._failed.get(rec.pci_address, "")
            if problem:
                self._failed[rec.pci_address] = problem
            else:
                self._failed.pop(rec.pci_address, None)
        if problem != before:
            if problem:
                log.warning("connection %s: %s", rec.connection_id, problem)
            self._emit("UPDATE", self._info(rec))

    # -- helpers ----------------------------------------------------------------------------------
    def _write(self, rec: VfRecord) -> None:
        self.journal.write(rec)
        with self._lock:
            self._records[rec.pci_address] = rec

    def _info(self, rec: VfRecord) -> ConnectionInfo:
        return rec.info(self._failed.get(rec.pci_address, ""))


def _endpoint_client(cfg: NsmgrConfig) -> EndpointClient:
    local = LocalServices(cfg.services)
    if not cfg.registry.url:
        return local
    from nicinventory.errors import InventoryError
    from nsmgr.remote import RegistryEndpoints, inventory_tor_lookup

    inv = cfg.registry.nicinventory_config
    try:
        tor_lookup = inventory_tor_lookup(inv) if inv else None
    except InventoryError as e:
        raise ConfigError(f"registry.nicinventory_config: {e}") from None
    return RegistryEndpoints(
        local, cfg.registry.url, cfg.node_name, timeout=cfg.registry.timeout, tor_lookup=tor_lookup
    )
