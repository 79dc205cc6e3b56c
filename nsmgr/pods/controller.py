"""Pods in, connections out: the agent holds exactly the connections this node's pods ask for.

Level-based, like a Kubernetes controller: an event only says which pod to look at; `sync_pod`
compares what the pod wants now (annotation, VFs from kubelet, netns from the runtime) with the
agent's connections for that pod and requests or closes the difference. `reconcile()` does that
for every pod the source knows and every pod the agent still has connections for, at start and
every `resync_seconds`: after an agent or nsmgr restart, connections of pods that went away are
closed and missing ones requested, once, because ids are deterministic (`<pod uid>-<n>`, n the
position of the service in the annotation) and an attached connection is left alone.

A pod whose VFs or sandbox are not there yet (kubelet reports devices after admission, the
sandbox appears later) is tried again with a growing pause. Failures never stop the loop; each
distinct problem of a pod is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from nsmgr.model import AttachRequest, ConnectionAgent, ConnectionInfo, PodRef, RequestError
from nsmgr.pods.annotations import PodService, parse_annotations
from nsmgr.pods.errors import PodsError
from nsmgr.pods.netns import same_netns
from nsmgr.pods.podresources import PodDevice
from nsmgr.pods.podsource import Pod, PodEvent, PodSource

log = logging.getLogger(__name__)

DevicesByPod = Mapping[tuple[str, str], list[PodDevice]]


class DeviceLookup(Protocol):
    """The part of PodResourcesClient the controller uses."""

    def devices(self, namespace: str, name: str) -> list[PodDevice]: ...

    def list_all(self) -> dict[tuple[str, str], list[PodDevice]]: ...


class NetnsLookup(Protocol):
    """The part of NetnsResolver the controller uses."""

    def resolve(self, pod_uid: str) -> str: ...


def connection_id(pod_uid: str, index: int) -> str:
    return f"{pod_uid}-{index}"


def owner_uid(conn: ConnectionInfo) -> str | None:
    """The pod UID of a connection this integration made; None for anyone else's."""
    if conn.pod is None or not conn.pod.uid:
        return None
    prefix = conn.pod.uid + "-"
    rest = conn.id[len(prefix) :] if conn.id.startswith(prefix) else ""
    return conn.pod.uid if rest.isdigit() else None


@dataclass
class SyncResult:
    """What one pass over one pod did; `retry` says why it needs another pass soon."""

    uid: str
    requested: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    retry: str = ""


@dataclass
class ReconcileResult:
    synced: bool = False  # False: the pod list is not complete yet, nothing was done
    pods: int = 0
    requested: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # pod uid -> why


class PodController:
    """Drives `agent` from `source`; one worker thread, started by `start()`."""

    def __init__(
        self,
        agent: ConnectionAgent,
        source: PodSource,
        resources: DeviceLookup,
        resolver: NetnsLookup,
        node: str,
        *,
        resync_seconds: float = 60.0,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.agent = agent
        self.source = source
        self.resources = resources
        self.resolver = resolver
        self.node = node
        self.resync_seconds = resync_seconds
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._sync_lock = threading.RLock()  # one pass at a time, worker or caller
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}  # pod uid -> when to look at it (monotonic)
        self._attempts: dict[str, int] = {}
        self._reported: dict[str, set[str]] = {}  # pod uid -> problems already logged
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self.source.subscribe(self._on_event)
        self.source.start()
        self._thread = threading.Thread(target=self._run, name="nsm-pods-controller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.source.stop()
        self.source.unsubscribe(self._on_event)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _on_event(self, event: PodEvent) -> None:
        self._schedule(event.pod.uid, time.monotonic())

    def _schedule(self, uid: str, at: float) -> None:
        with self._cond:
            self._due[uid] = min(at, self._due.get(uid, at))
            self._cond.notify_all()

    def _run(self) -> None:
        next_resync: float | None = None  # None until the first complete pod list
        failed = 0  # reconciles failed in a row: retried sooner than the resync period
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                resync = self.source.has_synced() and (next_resync is None or now >= next_resync)
                due = [uid for uid, at in self._due.items() if at <= now]
                if not due and not resync:
                    # before the first list, poll: the source does not notify us of it
                    wake = min(
                        min(self._due.values(), default=now + 3600.0),
                        now + 0.05 if next_resync is None else next_resync,
                    )
                    self._cond.wait(max(wake - now, 0.0))
                    continue
                for uid in due:
                    del self._due[uid]
            if resync:
                if self._guarded(self.reconcile):
                    failed, pause = 0, self.resync_seconds
                else:
                    pause = self._backoff(failed)
                    failed += 1
                next_resync = time.monotonic() + pause
            for uid in due:
                self._guarded(lambda u=uid: self._sync_and_schedule(u))

    @staticmethod
    def _guarded(fn: Callable[[], object]) -> bool:
        try:
            fn()
        except Exception as e:  # the loop outlives every bug below it; one line, no traceback
            log.error("pod controller: %s: %s", type(e).__name__, e)
            return False
        return True

    # -- passes ----------------------------------------------------------------------------
    def reconcile(self) -> ReconcileResult:
        """One pass over every pod known to the source or to the agent's connections."""
        result = ReconcileResult()
        if not self.source.has_synced():
            log.debug("pod list not complete yet: reconcile skipped")
            return result
        result.synced = True
        uids = {p.uid for p in self.source.pods()}
        uids |= {u for c in self.agent.connections() if (u := owner_uid(c)) is not None}
        try:
            devices: DevicesByPod | None = self.resources.list_all()
        except PodsError as e:
            log.debug("reconcile: %s; asking per pod", e)
            devices = None
        # pods that went first: their VFs may already be another pod's, whose request would be
        # refused while the old connection holds them
        for uid in sorted(uids, key=lambda u: (self._is_live(u), u)):
            res = self._sync_and_schedule(uid, devices)
            result.pods += 1
            result.requested += res.requested
            result.closed += res.closed
            if res.retry:
                result.waiting[uid] = res.retry
        return result

    def _is_live(self, uid: str) -> bool:
        pod = self.source.get(uid)
        return pod is not None and pod.node == self.node and pod.active

    def _sync_and_schedule(self, uid: str, devices: DevicesByPod | None = None) -> SyncResult:
        try:
            res = self.sync_pod(uid, devices)
        except Exception as e:  # an agent or lookup bug: one line, then the usual retry
            res = SyncResult(uid, retry=f"{type(e).__name__}: {e}")
            with self._sync_lock:
                self._report_once(uid, uid, res.retry, logging.WARNING)
        with self._cond:
            if not res.retry:
                self._attempts.pop(uid, None)
                return res
            n = self._attempts.get(uid, 0)
            self._attempts[uid] = n + 1
        self._schedule(uid, time.monotonic() + self._backoff(n))
        return res

    def _backoff(self, attempt: int) -> float:
        # the exponent is capped: a pod waiting for days must not overflow a float
        return min(self.retry_initial * 2 ** min(attempt, 32), self.retry_max)

    def sync_pod(self, uid: str, devices: DevicesByPod | None = None) -> SyncResult:
        """Make the agent's connections for pod `uid` what the pod asks for now."""
        with self._sync_lock:
            res = SyncResult(uid)
            actual = {c.id: c for c in self.agent.connections() if owner_uid(c) == uid}
            pod = self.source.get(uid)
            if pod is None and not self.source.has_synced():
                return res  # unknown is not gone yet: the first reconcile comes back to it
            if pod is None or pod.node != self.node or not pod.active:
                self._close(actual, res)
                if not res.retry:
                    self._forget(uid)
                return res
            try:
                services = parse_annotations(pod.annotations)
            except RequestError as e:
                self._report_once(uid, pod.key, str(e), logging.WARNING)
                self._close(actual, res)
                return res
            if not services:
                self._close(actual, res)
                return res
            return self._attach(pod, services, actual, devices, res)

    def _attach(
        self,
        pod: Pod,
        services: list[PodService],
        actual: dict[str, ConnectionInfo],
        devices: DevicesByPod | None,
        res: SyncResult,
    ) -> SyncResult:
        # until VFs and netns are known, existing connections stay as they are: a kubelet or
        # runtime hiccup must not tear down a running pod's interfaces
        try:
            if devices is not None and (pod.namespace, pod.name) in devices:
                vfs = devices[(pod.namespace, pod.name)]
            else:
                vfs = self.resources.devices(pod.namespace, pod.name)
            if not vfs:
                return self._wait(pod, res, "kubelet reports no VF for it yet")
            netns = self.resolver.resolve(pod.uid)
        except PodsError as e:
            return self._wait(pod, res, str(e))
        desired: dict[str, tuple[AttachRequest, PodService]] = {}
        ref = PodRef(pod.namespace, pod.name, pod.uid)
        for i, svc in enumerate(services):
            if i >= len(vfs):
                self._report_once(
                    pod.uid,
                    pod.key,
                    f"service {svc.service} ({svc.ifname}) got no VF: the pod holds "
                    f"{len(vfs)} VF(s) for {len(services)} services",
                    logging.WARNING,
                )
                continue
            cid = connection_id(pod.uid, i)
            req = AttachRequest(
                service=svc.service,
                pci_address=vfs[i].pci_address,
                netns=netns,
                ifname=svc.ifname,
                pod=ref,
                connection_id=cid,
                labels=dict(svc.labels),
            )
            desired[cid] = (req, svc)
        # a connection whose VF, interface or service changed is closed and made anew
        stale = {
            cid: c
            for cid, c in actual.items()
            if cid not in desired or not _same_target(c, desired[cid][0])
        }
        self._close(stale, res)
        for cid, (req, svc) in desired.items():
            current = actual.get(cid) if cid not in stale else None
            if (
                current is not None
                and current.state == "attached"
                and same_netns(current.netns, req.netns)
            ):
                continue
            self._request(pod, req, svc, res)
        if not res.retry:  # settled: a later wait is news again
            seen = self._reported.get(pod.uid, set())
            seen -= {m for m in seen if m.startswith("waiting: ")}
        return res

    def _request(self, pod: Pod, req: AttachRequest, svc: PodService, res: SyncResult) -> None:
        cid = req.connection_id
        try:
            info = self.agent.request(req)
        except Exception as e:
            # retried like any wait: a refusal may be for now only (the VF is mid-detach, the
            # netns is being replaced); the pause grows to retry_max, the log line is once
            res.retry = f"{svc.service} ({svc.ifname}) on {req.pci_address}: {e}"
            level = logging.ERROR if isinstance(e, RequestError) else logging.WARNING
            self._report_once(pod.uid, pod.key, res.retry, level)
            return
        res.requested.append(cid)
        log.info(
            "pod %s: %s attached as %s (%s, %s)",
            pod.key,
            svc.service,
            svc.ifname,
            req.pci_address,
            info.mechanism or "?",
        )
        if svc.mechanism and info.mechanism and info.mechanism != svc.mechanism:
            self._report_once(
                pod.uid,
                pod.key,
                f"{svc.service} ({svc.ifname}) asked for {svc.mechanism.lower()}:// but the VF "
                f"{req.pci_address} is attached as {info.mechanism} (its driver decides)",
                logging.WARNING,
            )

    def _close(self, conns: Mapping[str, ConnectionInfo], res: SyncResult) -> None:
        for cid in sorted(conns):
            try:
                self.agent.close(cid)
            except Exception as e:
                res.retry = f"close {cid} failed: {e}"
                self._report_once(res.uid, res.uid, res.retry, logging.WARNING)
                continue
            res.closed.append(cid)
            log.info("connection %s closed (%s)", cid, conns[cid].service)

    def _wait(self, pod: Pod, res: SyncResult, why: str) -> SyncResult:
        res.retry = why
        self._report_once(pod.uid, pod.key, f"waiting: {why}", logging.INFO)
        return res

    def _report_once(self, uid: str, what: str, message: str, level: int) -> None:
        seen = self._reported.setdefault(uid, set())
        if message not in seen:
            seen.add(message)
            log.log(level, "pod %s: %s", what, message)

    def _forget(self, uid: str) -> None:
        self._reported.pop(uid, None)


def _same_target(conn: ConnectionInfo, req: AttachRequest) -> bool:
    return (conn.pci_address, conn.ifname, conn.service) == (
        req.pci_address,
        req.ifname,
        str(req.service),
    )
