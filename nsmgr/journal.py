"""The journal: one durable JSON record per VF in `<state_dir>/vfs/<pci>.json`.

A record is written before every step that changes the VF (its `phase` names the step about to
run), replaced atomically (tmp file, fsync, rename, fsync of the directory), so after a crash the
record is the last phase fully written, never a torn one. The first record of an attach holds the
VF's original state; a detach ends with phase `free`, which keeps the VF's `generation`: each
attach takes the next one, so a late Close of an old connection cannot reset the VF's new owner.

Each VF has a lock (`flock` on `<state_dir>/locks/<pci>.lock`, a fresh open file per holder, so it
excludes other threads as well as other processes), and the whole state dir has one
(`agent.lock`) held by the running agent.

Crash tests: with NSMGR_CRASH_AT=<phase> in the environment, the process SIGKILLs itself right
after the record of that phase is durable, i.e. between the previous step and that one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nsmgr.endpoint import EndpointContext, EndpointRequest
from nsmgr.errors import JournalError
from nsmgr.model import ConnectionInfo, PodRef, ServiceRef
from nsmgr.vfstate import VfOriginal

VERSION = 1
CRASH_ENV = "NSMGR_CRASH_AT"
FREE, ATTACHED = "free", "attached"
ATTACH_PHASES = ("attach:endpoint", "attach:pf", "attach:move", "attach:configure")
DETACH_PHASES = ("detach:pf", "detach:netns", "detach:host")
PHASES = (*ATTACH_PHASES, ATTACHED, *DETACH_PHASES, FREE)


@dataclass
class VfRecord:
    """A VF's state as far as nsmgr is concerned. Mutable: the agent advances it under the VF's
    lock and writes it before each step."""

    pci_address: str
    generation: int = 0
    phase: str = FREE
    connection_id: str = ""
    service: str = ""
    netns: str = ""  # the path the request gave
    netns_inode: str = ""  # inode://dev/ino: the namespace itself (a path can be reused)
    ifname: str = ""
    mechanism: str = ""  # KERNEL | VFIO
    pod: dict[str, str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    original: VfOriginal | None = None
    context: EndpointContext | None = None
    pf_status: str = ""  # applied | nothing | skipped | refused
    pf_applied: list[str] = field(default_factory=list)
    netdev_mac: str | None = None  # a MAC set on the netdev itself (PF could not set it)
    pod_ifindex: int | None = None
    error: str = ""  # why the last restore failed, while it stays pending
    updated: float = 0.0

    @property
    def busy(self) -> bool:
        return self.phase != FREE

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "pci_address": self.pci_address,
            "generation": self.generation,
            "phase": self.phase,
            "connection_id": self.connection_id,
            "service": self.service,
            "netns": self.netns,
            "netns_inode": self.netns_inode,
            "ifname": self.ifname,
            "mechanism": self.mechanism,
            "pod": self.pod,
            "labels": self.labels,
            "original": self.original.to_dict() if self.original else None,
            "context": self.context.to_dict() if self.context else None,
            "pf_status": self.pf_status,
            "pf_applied": self.pf_applied,
            "netdev_mac": self.netdev_mac,
            "pod_ifindex": self.pod_ifindex,
            "error": self.error,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VfRecord:
        if d.get("version") != VERSION:
            raise ValueError(f"record version {d.get('version')!r}, expected {VERSION}")
        if d.get("phase") not in PHASES:
            raise ValueError(f"unknown phase {d.get('phase')!r}")
        return cls(
            pci_address=d["pci_address"],
            generation=int(d["generation"]),
            phase=d["phase"],
            connection_id=d.get("connection_id", ""),
            service=d.get("service", ""),
            netns=d.get("netns", ""),
            netns_inode=d.get("netns_inode", ""),
            ifname=d.get("ifname", ""),
            mechanism=d.get("mechanism", ""),
            pod=d.get("pod"),
            labels=dict(d.get("labels") or {}),
            original=VfOriginal.from_dict(d["original"]) if d.get("original") else None,
            context=EndpointContext.from_dict(d["context"]) if d.get("context") else None,
            pf_status=d.get("pf_status", ""),
            pf_applied=list(d.get("pf_applied") or []),
            netdev_mac=d.get("netdev_mac"),
            pod_ifindex=d.get("pod_ifindex"),
            error=d.get("error", ""),
            updated=float(d.get("updated", 0.0)),
        )

    def endpoint_request(self, node: str) -> EndpointRequest:
        """What the endpoint is told about this record's connection."""
        orig = self.original
        return EndpointRequest(
            connection_id=self.connection_id,
            service=ServiceRef.parse(self.service),
            node=node,
            pci_address=self.pci_address,
            pf_pci=orig.pf_pci if orig else "",
            pf_ifname=orig.pf_ifname if orig else None,
            vf_index=orig.vf_index if orig else -1,
            mechanism=self.mechanism,
            pod=PodRef(**self.pod) if self.pod else None,
        )

    def info(self, failed: str = "") -> ConnectionInfo:
        """The connection as the agent shows it; `failed` says why an attached one is not as
        it was made (reconcile found it so)."""
        if self.phase == ATTACHED:
            state, error = ("failed", failed) if failed else ("attached", "")
        elif self.phase in ATTACH_PHASES:
            state, error = "attaching", self.error
        else:
            state, error = "detaching", self.error
        ctx, orig = self.context, self.original
        # the MAC the VF really got: on its netdev, or through the PF (not one that was skipped)
        mac = self.netdev_mac or (ctx.vf.mac if ctx and "mac" in self.pf_applied else "") or ""
        routes = (
            tuple(r.prefix + (f" via {r.via}" if r.via else "") for r in ctx.routes) if ctx else ()
        )
        return ConnectionInfo(
            id=self.connection_id,
            service=self.service,
            pci_address=self.pci_address,
            ifname=self.ifname,
            netns=self.netns,
            state=state,
            mechanism=self.mechanism,
            pod=PodRef(**self.pod) if self.pod else None,
            pf=(orig.pf_ifname or orig.pf_pci) if orig else "",
            vf_index=orig.vf_index if orig else -1,
            vlan=(ctx.vf.vlan or 0) if ctx else 0,
            mtu=(ctx.mtu or (orig.netdev.mtu if orig and orig.netdev else 0)) if ctx else 0,
            addresses=ctx.addresses if ctx else (),
            generation=self.generation,
            netns_inode=self.netns_inode,
            mac=mac,
            routes=routes,
            dns_servers=ctx.dns_servers if ctx else (),
            dns_search=ctx.dns_search if ctx else (),
            labels=dict(self.labels),
            endpoint=ctx.endpoint if ctx else "",
            pf_status=self.pf_status,
            error=error,
        )

    def freed(self) -> VfRecord:
        """The record once the VF is back: only its generation is remembered."""
        return VfRecord(self.pci_address, generation=self.generation, phase=FREE)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.vfs_dir = os.path.join(state_dir, "vfs")
        self.locks_dir = os.path.join(state_dir, "locks")
        try:
            for d in (state_dir, self.vfs_dir, self.locks_dir):
                os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as e:
            raise JournalError(f"state dir {state_dir}: {e.strerror}") from e
        self._agent_lock: int | None = None

    def path(self, pci_address: str) -> str:
        return os.path.join(self.vfs_dir, f"{pci_address}.json")

    # -- records ----------------------------------------------------------------------------------
    def read(self, pci_address: str) -> VfRecord | None:
        path = self.path(pci_address)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return VfRecord.from_dict(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise JournalError(f"{path}: unreadable record: {e}") from e

    def read_all(self) -> tuple[dict[str, VfRecord], list[tuple[str, str]]]:
        """Every record, and (pci, one line) per file that is not a readable record. Leftover tmp files
        of a crash mid-write are removed: their rename never happened, the old record stands."""
        records: dict[str, VfRecord] = {}
        problems: list[tuple[str, str]] = []
        for name in sorted(os.listdir(self.vfs_dir)):
            if ".json.tmp" in name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.vfs_dir, name))
                continue
            if not name.endswith(".json"):
                continue
            pci = name[: -len(".json")]
            try:
                rec = self.read(pci)
            except JournalError as e:
                problems.append((pci, str(e)))
                continue
            if rec is not None:
                if rec.pci_address != pci:
                    problems.append((pci, f"{self.path(pci)}: record is for {rec.pci_address}"))
                    continue
                records[pci] = rec
        return records, problems

    def write(self, rec: VfRecord) -> None:
        """Durably replace the VF's record (call with the VF's lock held)."""
        rec.updated = time.time()
        path = self.path(rec.pci_address)
        tmp = path + ".tmp"
        data = json.dumps(rec.to_dict(), separators=(",", ":")).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            _fsync_dir(self.vfs_dir)
        except OSError as e:
            raise JournalError(f"{path}: cannot write: {e.strerror}") from e
        if os.environ.get(CRASH_ENV) == rec.phase:  # fault injection for the crash tests
            os.kill(os.getpid(), signal.SIGKILL)

    # -- locks ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def vf_lock(self, pci_address: str) -> Iterator[None]:
        path = os.path.join(self.locks_dir, f"{pci_address}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the file releases the lock

    def lock_agent(self) -> None:
        """Hold the state dir for this process; JournalError when another agent holds it."""
        path = os.path.join(self.state_dir, "agent.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalError(f"another nsmgr is running on state dir {self.state_dir}") from e
            raise JournalError(f"{path}: {e.strerror}") from e
        self._agent_lock = fd

    def unlock_agent(self) -> None:
        if self._agent_lock is not None:
            os.close(self._agent_lock)
            self._agent_lock = None
