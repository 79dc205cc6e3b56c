"""Host event sources: kernel uevents (pyudev) and netlink link messages (pyroute2).

Each source runs in its own thread and hands plain `HostEvent`s to a callback; it never touches the
inventory. Tests inject events through the same callback (`InventoryWatcher.inject`), so the
watcher cannot tell them from the real ones.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from nicinventory.errors import InventoryError
from nicinventory.sysfs import bdf_from_devpath

log = logging.getLogger(__name__)

# Actions the watcher reacts to; udev also sends "online"/"offline" for CPUs and memory.
PCI_ACTIONS = frozenset({"add", "remove", "bind", "unbind", "change", "move"})


@dataclass(frozen=True)
class HostEvent:
    source: str  # "udev", "netlink" or whatever a test names it
    subsystem: str  # "pci" or "net"
    action: str  # add, remove, bind, unbind, change, move
    pci_address: str | None = None  # from DEVPATH; None for virtual netdevs
    ifname: str | None = None
    old_ifname: str | None = None  # for a rename ("move")
    attrs: Mapping[str, Any] = field(default_factory=dict)  # netlink: state, carrier, mtu, mac


Emit = Callable[[HostEvent], None]


class EventSource(Protocol):
    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Deliver events until `stop` is set; must notice it within about half a second."""


class UdevSource:
    """Kernel uevents on `pci` and `net`, read from the kernel netlink group.

    `source="kernel"` because no udevd runs on many nodes' agents' view (and none here); the
    kernel's own messages carry everything we use. With `netns`, the socket is opened in that
    network namespace, where net uevents are scoped.
    """

    name = "udev"

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._monitor = self._open()

    def _open(self) -> Any:
        import pyudev

        def monitor() -> Any:
            m = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
            m.filter_by("pci")
            m.filter_by("net")
            m.start()
            return m

        return in_netns(self.netns, monitor)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        while not stop.is_set():
            device = self._monitor.poll(timeout=0.5)
            if device is None or device.action not in PCI_ACTIONS:
                continue
            props = device.properties
            devpath = props.get("DEVPATH", "")
            old = props.get("DEVPATH_OLD")
            emit(
                HostEvent(
                    source=self.name,
                    subsystem=device.subsystem,
                    action=device.action,
                    pci_address=bdf_from_devpath(devpath)
                    if device.subsystem == "net"
                    else device.sys_name,
                    ifname=props.get("INTERFACE") if device.subsystem == "net" else None,
                    old_ifname=old.rsplit("/", 1)[-1] if old else None,
                )
            )


class NetlinkSource:
    """RTM_NEWLINK / RTM_DELLINK: carrier and operstate changes, which udev does not report.

    A plain rtnetlink socket, parsed with pyroute2's marshal. Not pyroute2's IPRoute: since 0.9 it
    keeps its socket per thread, so one bound in __init__ and read in run()'s thread never sees a
    message, and its reader buffers datagrams where select() on the fd cannot see them.
    """

    name = "netlink"

    def __init__(self, netns: str | None = None) -> None:
        from pyroute2.netlink import NETLINK_ROUTE
        from pyroute2.netlink.rtnl import RTMGRP_LINK

        self._sock = in_netns(
            netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        )
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_LINK))

    def run(self, emit: Emit, stop: threading.Event) -> None:
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        marshal = MarshalRtnl()
        try:
            while not stop.is_set():
                ready, _, _ = select.select([self._sock], [], [], 0.5)
                if not ready:
                    continue
                try:
                    data = self._sock.recv(1 << 16)
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    log.warning("netlink socket overrun: link events lost until the next rescan")
                    continue
                for msg in marshal.parse(data):
                    event = self.to_event(msg)
                    if event is not None:
                        emit(event)
        finally:
            self._sock.close()

    @classmethod
    def to_event(cls, msg: Any) -> HostEvent | None:
        kind = msg.get("event")
        if kind not in ("RTM_NEWLINK", "RTM_DELLINK"):
            return None
        ifname = msg.get_attr("IFLA_IFNAME")
        if not ifname:
            return None
        if kind == "RTM_DELLINK":
            return HostEvent(source=cls.name, subsystem="net", action="remove", ifname=ifname)
        state = msg.get_attr("IFLA_OPERSTATE")
        carrier = msg.get_attr("IFLA_CARRIER")
        attrs = {
            "state": state.lower() if isinstance(state, str) else None,
            "carrier": None if carrier is None else bool(carrier),
            "mtu": msg.get_attr("IFLA_MTU"),
            "mac": msg.get_attr("IFLA_ADDRESS"),
        }
        return HostEvent(
            source=cls.name,
            subsystem="net",
            action="change",
            ifname=ifname,
            attrs={k: v for k, v in attrs.items() if v is not None},
        )


_T = TypeVar("_T")


def in_netns(netns: str | None, make: Callable[[], _T]) -> _T:
    """`make()` run in network namespace `netns` (a name under /run/netns or a path), for sockets
    that must live there. A missing namespace is an error: pyroute2 would silently create it."""
    if not netns:
        return make()
    from pyroute2 import netns as nsmod

    path = netns if os.path.dirname(netns) else os.path.join("/run/netns", netns)
    if not os.path.exists(path):
        raise InventoryError(f"network namespace {netns!r} does not exist")
    nsmod.pushns(path)
    try:
        return make()
    finally:
        nsmod.popns()


def start_sources(
    sources: list[EventSource], emit: Emit, stop: threading.Event
) -> list[threading.Thread]:
    threads = []
    for src in sources:

        def _run(src: EventSource = src) -> None:
            try:
                src.run(emit, stop)
            except Exception:  # a dead source must be loud, the rescan keeps the inventory right
                log.exception("event source %s died; periodic rescans continue", src.name)

        t = threading.Thread(target=_run, name=f"nicinventory-{src.name}", daemon=True)
        t.start()
        threads.append(t)
    return threads
