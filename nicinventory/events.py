"""Host event sources: kernel uevents (pyudev) and netlink link messages (rtnetlink).

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
import struct
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


# rtnetlink, from <linux/rtnetlink.h> and <linux/if_link.h>: all the link messages need.
NETLINK_ROUTE, RTMGRP_LINK = 0, 1
RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_OPERSTATE, IFLA_CARRIER = 1, 3, 4, 16, 33
_OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG_SIZE = 16  # family, pad, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # len, type


@dataclass(frozen=True)
class LinkMessage:
    """One RTM_NEWLINK/RTM_DELLINK, parsed; `get`/`get_attr` answer as pyroute2's messages do."""

    event: str
    attrs: Mapping[str, Any]

    def get(self, key: str) -> Any:
        return self.event if key == "event" else None

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def parse_link_messages(data: bytes) -> list[LinkMessage]:
    """The link messages in one netlink datagram (others skipped). Hand-parsed: pyroute2's parser
    costs the daemons about 10 MB of resident memory for these five attributes."""
    out: list[LinkMessage] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _, _, _ = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            attrs: dict[str, Any] = {}
            a, end = off + _NLMSGHDR.size + _IFINFOMSG_SIZE, off + length
            while a + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(data, a)
                if alen < _RTATTR.size:
                    break
                payload = data[a + _RTATTR.size : a + alen]
                atype &= 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
                if atype == IFLA_IFNAME:
                    attrs["IFLA_IFNAME"] = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
                elif atype == IFLA_MTU and len(payload) >= 4:
                    attrs["IFLA_MTU"] = struct.unpack_from("=I", payload)[0]
                elif atype == IFLA_OPERSTATE and payload:
                    state = payload[0]
                    attrs["IFLA_OPERSTATE"] = (
                        _OPERSTATES[state] if state < len(_OPERSTATES) else str(state)
                    )
                elif atype == IFLA_CARRIER and payload:
                    attrs["IFLA_CARRIER"] = payload[0]
                elif atype == IFLA_ADDRESS and payload:
                    attrs["IFLA_ADDRESS"] = ":".join(f"{b:02x}" for b in payload)
                a += (alen + 3) & ~3
            kind = "RTM_NEWLINK" if mtype == RTM_NEWLINK else "RTM_DELLINK"
            out.append(LinkMessage(kind, attrs))
        off += (length + 3) & ~3
    return out


class NetlinkSource:
    """RTM_NEWLINK / RTM_DELLINK: carrier and operstate changes, which udev does not report.

    A plain rtnetlink socket. Not pyroute2's IPRoute: since 0.9 it keeps its socket per thread, so
    one bound in __init__ and read in run()'s thread never sees a message, and its reader buffers
    datagrams where select() on the fd cannot see them.
    """

    name = "netlink"

    def __init__(self, netns: str | None = None) -> None:
        self._sock = in_netns(
            netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        )
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._sock.bind((0, RTMGRP_LINK))

    def run(self, emit: Emit, stop: threading.Event) -> None:
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
                for msg in parse_link_messages(data):
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
