"""Keeps an inventory current: events re-read only the NIC they touch; a periodic rescan and SIGHUP
re-read everything, in case an event was lost (a netlink socket overrun, a source that died).

The watcher owns the inventory. Sources only post events; `changes()` is the single consumer that
applies them, so no lock guards the inventory and readers take an immutable snapshot.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator

from nicinventory.diff import Change, diff_nic
from nicinventory.events import EventSource, HostEvent, start_sources
from nicinventory.model import NIC, Inventory
from nicinventory.sysfs import SysfsReader
from nicinventory.tor import TorMap

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Rescan:
    reason: str


_STOP = object()


class InventoryWatcher:
    def __init__(
        self,
        reader: SysfsReader,
        sources: list[EventSource] | None = None,
        rescan_period: float = 60.0,
        tor_map: Callable[[], TorMap] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.sources = list(sources or [])
        self.rescan_period = rescan_period
        self._tor_map = tor_map
        self._clock = clock
        # SimpleQueue.put is reentrant, so a signal handler may post to it safely.
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.inventory = Inventory()
        self._by_ifname: dict[str, str] = {}  # netdev name -> owning NIC's PCI address
        self._by_pci: dict[str, str] = {}  # VF or NIC PCI address -> owning NIC's PCI address
        self.stats = {"events": 0, "nic_reads": 0, "full_scans": 0}
        # Kept across changes() calls: a caller polling with short timeouts still gets rescans.
        self._next_rescan = clock() + rescan_period

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Inventory:
        """First full scan, then the sources; events that arrive meanwhile are queued, not lost."""
        self._threads = start_sources(self.sources, self.inject, self._stop)
        self._full_scan()
        return self.inventory

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout=2)

    def inject(self, event: HostEvent) -> None:
        """Post an event as a source would (thread- and signal-safe)."""
        self._queue.put(event)

    def request_rescan(self, reason: str = "sighup") -> None:
        """Ask for a full rescan (safe from a signal handler)."""
        self._queue.put(_Rescan(reason))

    # -- the loop -------------------------------------------------------------------------------
    def changes(self, timeout: float | None = None) -> Iterator[Change]:
        """Apply events as they come and yield what changed. Ends on stop() or after `timeout` s."""
        deadline = None if timeout is None else self._clock() + timeout
        while not self._stop.is_set():
            now = self._clock()
            if now >= self._next_rescan:  # before the queue: a stream of events must not starve it
                yield from self._full_scan("rescan")
                continue
            if deadline is not None and now >= deadline:
                return
            until = self._next_rescan if deadline is None else min(self._next_rescan, deadline)
            try:
                item = self._queue.get(timeout=max(until - now, 0.0))
            except queue.Empty:
                continue
            if item is _STOP:
                return
            if isinstance(item, _Rescan):
                yield from self._full_scan(item.reason)
            elif isinstance(item, HostEvent):
                yield from self.apply(item)

    def drain(self) -> list[Change]:
        """Apply everything queued now, without waiting (tests, and callers with their own loop)."""
        out: list[Change] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, _Rescan):
                out.extend(self._full_scan(item.reason))
            elif isinstance(item, HostEvent):
                out.extend(self.apply(item))

    # -- applying events ------------------------------------------------------------------------
    def apply(self, event: HostEvent) -> list[Change]:
        self.stats["events"] += 1
        owner = self._owner(event)
        if owner is None:
            return []  # a netdev or function that is not ours (veth, bridge, NVMe, ...)
        if event.action == "change" and event.attrs:
            return self._apply_link(owner, event)
        return self._reread(owner, event.source)

    def _owner(self, event: HostEvent) -> str | None:
        if event.pci_address:
            return self._by_pci.get(event.pci_address) or self.reader.owner_of(event.pci_address)
        for name in (event.ifname, event.old_ifname):
            if name and name in self._by_ifname:
                return self._by_ifname[name]
        if event.ifname:  # a netdev we have not seen yet: a VF bound to its driver, say
            bdf = self.reader.device_of_ifname(event.ifname)
            if bdf:
                return self.reader.owner_of(bdf)
        return None

    def _apply_link(self, owner: str, event: HostEvent) -> list[Change]:
        """Carrier/operstate from the message itself: it is newer than anything sysfs could say."""
        old = self._nic(owner)
        if old is None:
            return self._reread(owner, event.source)
        if old.ifname != event.ifname:
            return []  # a VF's netdev: the model keeps no VF link state; udev reports its moves
        netdir = os.path.join(self.reader.root, "class", "net", old.ifname)
        link = self.reader.read_link(netdir)
        new = dataclasses.replace(old, link=dataclasses.replace(link, **dict(event.attrs)))
        return self._store(owner, old, new, event.source)

    def _reread(self, owner: str, source: str) -> list[Change]:
        self.stats["nic_reads"] += 1
        return self._store(owner, self._nic(owner), self.reader.read_nic(owner), source)

    def _nic(self, bdf: str) -> NIC | None:
        return next((n for n in self.inventory.nics if n.pci_address == bdf), None)

    def _store(self, bdf: str, old: NIC | None, new: NIC | None, source: str) -> list[Change]:
        changes = diff_nic(old, new, source=source, time=time.time())
        if changes:
            self.inventory = self.inventory.replace_nic(bdf, new)
            same_names = old is not None and new is not None and old.ifname == new.ifname
            if not (same_names and old.sriov is new.sriov):  # link-only updates keep the index
                self._index()
        return changes

    def _full_scan(self, reason: str = "start") -> list[Change]:
        self.stats["full_scans"] += 1
        self._next_rescan = self._clock() + self.rescan_period
        if self._tor_map is not None:
            self.reader.tor_lookup = self._tor_map().lookup
        old = {n.pci_address: n for n in self.inventory.nics}
        fresh = self.reader.scan()
        new = {n.pci_address: n for n in fresh.nics}
        self.inventory = fresh
        self._index()
        if reason == "start":
            return []
        now = time.time()
        out: list[Change] = []
        for bdf in sorted(old.keys() | new.keys()):
            out.extend(diff_nic(old.get(bdf), new.get(bdf), source=reason, time=now))
        return out

    def _index(self) -> None:
        by_ifname: dict[str, str] = {}
        by_pci: dict[str, str] = {}
        for nic in self.inventory.nics:
            by_pci[nic.pci_address] = nic.pci_address
            if nic.ifname:
                by_ifname[nic.ifname] = nic.pci_address
            for vf in nic.sriov.vfs if nic.sriov else ():
                by_pci[vf.pci_address] = nic.pci_address
                if vf.ifname:
                    by_ifname[vf.ifname] = nic.pci_address
        self._by_ifname, self._by_pci = by_ifname, by_pci
