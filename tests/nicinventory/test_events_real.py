"""Real kernel events drive the watcher: veths in a private network namespace carry the names of
netdevs in a fake sysfs tree, so the kernel's netlink messages and uevents for them reach the
watcher as they would for the hardware.

Link state of a veth: up with its peer down is LOWERLAYERDOWN without carrier; the kernel's
linkwatch may apply operstate changes about a second late, so every wait here is bounded, never
timed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from nicinventory.diff import Change
from nicinventory.events import HostEvent, NetlinkSource, UdevSource, start_sources
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec
from nicinventory.model import NIC
from nicinventory.sysfs import SysfsReader
from nicinventory.watcher import InventoryWatcher
from tests.conftest import ip, needs_root

pytestmark = [needs_root, pytest.mark.netns]

REPO = Path(__file__).resolve().parents[2]
BOUND = 10.0  # seconds: the longest any single wait may take before the test fails
PF = "0000:3b:00.0"
PF_MAC = "02:00:00:3b:00:00"  # the fake PF's MAC and its veth's, so only link state differs


def build_tree(root: Path, pf_ifname: str) -> tuple[FakeSysfs, tuple[str, ...]]:
    """A host with one E810 PF: VF 0 has a netdev (<pf>v0), VF 1 is bound to vfio-pci."""
    fs = FakeSysfs(str(root))
    built = fs.add_pf(
        PFSpec(
            model="e810",
            pci_address=PF,
            ifname=pf_ifname,
            mac=PF_MAC,
            vfs=[VFSpec(), VFSpec(binding="vfio")],
        )
    )
    return fs, built.vf_addresses


def link_json(ns: str, ifname: str) -> dict[str, Any]:
    res = subprocess.run(
        ["ip", "-j", "-n", ns, "link", "show", ifname], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout)[0]


def pf_of(w: InventoryWatcher) -> NIC:
    nic = w.inventory.find(PF)
    assert nic is not None
    return nic


def wait_changes(
    w: InventoryWatcher, done: Callable[[list[Change]], bool], timeout: float = BOUND
) -> list[Change]:
    """Changes until `done(changes so far)` holds; fails after `timeout` seconds."""
    seen: list[Change] = []
    end = time.monotonic() + timeout
    while not done(seen):
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not seen within {timeout} s; changes so far: {seen}")
        for c in w.changes(timeout=min(left, 0.5)):
            seen.append(c)
            if done(seen):
                break
    return seen


@pytest.fixture
def running() -> Iterator[Callable[[InventoryWatcher], InventoryWatcher]]:
    """Starts watchers and always stops them."""
    started: list[InventoryWatcher] = []

    def start(w: InventoryWatcher) -> InventoryWatcher:
        started.append(w)
        w.start()
        return w

    try:
        yield start
    finally:
        for w in started:
            w.stop()


# -- the sources on their own -----------------------------------------------------------------------
class Collector:
    """Runs real sources in their threads and hands out what they emit, in any order."""

    def __init__(self, *sources: Any) -> None:
        self.q: queue.Queue[HostEvent] = queue.Queue()
        self.backlog: list[HostEvent] = []  # emitted, not asked for yet
        self.stop = threading.Event()
        self.threads = start_sources(list(sources), self.q.put, self.stop)

    def next(self, pred: Callable[[HostEvent], bool], what: str) -> HostEvent:
        """The first event `pred` accepts, from the backlog or within BOUND seconds."""
        for i, e in enumerate(self.backlog):
            if pred(e):
                return self.backlog.pop(i)
        end = time.monotonic() + BOUND
        while (left := end - time.monotonic()) > 0:
            try:
                e = self.q.get(timeout=left)
            except queue.Empty:
                break
            if pred(e):
                return e
            self.backlog.append(e)
        raise AssertionError(f"no {what} within {BOUND} s; got {self.backlog}")

    def all(self) -> list[HostEvent]:
        """Everything emitted so far and not asked for."""
        while True:
            try:
                self.backlog.append(self.q.get_nowait())
            except queue.Empty:
                return list(self.backlog)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(BOUND)
        assert not any(t.is_alive() for t in self.threads), "a source ignored stop"


def test_sources_turn_real_messages_into_host_events(netns: Callable[[], str]) -> None:
    ns = netns()
    col = Collector(UdevSource(netns=ns), NetlinkSource(netns=ns))
    try:
        ip("link", "add", "tev0", "type", "veth", "peer", "name", "tev0p", ns=ns)
        assert col.next(lambda e: e.source == "udev" and e.ifname == "tev0", "udev add") == (
            HostEvent(source="udev", subsystem="net", action="add", pci_address=None, ifname="tev0")
        )
        mac = link_json(ns, "tev0")["address"]
        e = col.next(lambda e: e.source == "netlink" and e.ifname == "tev0", "RTM_NEWLINK")
        assert (e.subsystem, e.action, e.pci_address, e.old_ifname) == ("net", "change", None, None)
        assert e.attrs == {"state": "down", "carrier": False, "mtu": 1500, "mac": mac}

        ip("link", "set", "tev0", "mtu", "1400", ns=ns)
        e = col.next(
            lambda e: e.source == "netlink" and e.ifname == "tev0" and e.attrs.get("mtu") == 1400,
            "RTM_NEWLINK with the new MTU",
        )
        assert e.attrs["state"] == "down"

        ip("link", "set", "tev0", "up", ns=ns)
        e = col.next(
            lambda e: e.ifname == "tev0" and e.attrs.get("state") == "lowerlayerdown",
            "tev0 up without a peer",
        )
        assert e.attrs["carrier"] is False  # states come lowercased, carrier as a bool

        ip("link", "set", "tev0", "name", "tev1", ns=ns)
        assert col.next(lambda e: e.source == "udev" and e.action == "move", "udev move") == (
            HostEvent(
                source="udev", subsystem="net", action="move", ifname="tev1", old_ifname="tev0"
            )
        )

        ip("link", "del", "tev1", ns=ns)
        assert col.next(
            lambda e: e.source == "netlink" and e.action == "remove", "RTM_DELLINK"
        ) == HostEvent(source="netlink", subsystem="net", action="remove", ifname="tev1")
        assert col.next(
            lambda e: e.source == "udev" and e.action == "remove" and e.ifname == "tev1",
            "udev remove",
        ) == HostEvent(source="udev", subsystem="net", action="remove", ifname="tev1")
    finally:
        col.close()


def test_to_event_on_a_dumped_link_message(netns: Callable[[], str]) -> None:
    from pyroute2 import IPRoute

    ns = netns()
    ip("link", "add", "tev2", "address", PF_MAC, "mtu", "9000", "type", "veth", "peer", "name",
       "tev2p", ns=ns)  # fmt: skip
    with IPRoute(netns=ns) as ipr:
        [msg] = ipr.get_links(ifname="tev2")
        addr = ipr.get_addr()
    assert NetlinkSource.to_event(msg) == HostEvent(
        source="netlink",
        subsystem="net",
        action="change",
        ifname="tev2",
        attrs={"state": "down", "carrier": False, "mtu": 9000, "mac": PF_MAC},
    )
    assert all(NetlinkSource.to_event(m) is None for m in addr)  # not link messages


def test_sources_only_hear_their_own_namespace(netns: Callable[[], str]) -> None:
    mine, other = netns(), netns()
    col = Collector(UdevSource(netns=mine), NetlinkSource(netns=mine))
    try:
        ip("link", "add", "tother0", "type", "veth", "peer", "name", "tother0p", ns=other)
        ip("link", "add", "tmine0", "type", "veth", "peer", "name", "tmine0p", ns=mine)
        col.next(lambda e: e.source == "udev" and e.ifname == "tmine0", "udev add in mine")
        col.next(lambda e: e.source == "netlink" and e.ifname == "tmine0", "netlink in mine")
        leaked = [e for e in col.all() if e.ifname and e.ifname.startswith("tother")]
        assert leaked == []
    finally:
        col.close()


def test_a_missing_namespace_is_an_error_not_created(netns: Callable[[], str]) -> None:
    name = f"{netns()}-missing"  # a unique name nobody made
    try:
        for source in (UdevSource, NetlinkSource):
            with pytest.raises(Exception, match="does not exist"):
                source(netns=name)
        assert not os.path.exists(f"/run/netns/{name}")
    finally:
        if os.path.exists(f"/run/netns/{name}"):
            subprocess.run(["ip", "netns", "del", name], check=False)


# -- the watcher on real events ---------------------------------------------------------------------
def test_pf_carrier_follows_the_peer(
    netns: Callable[[], str],
    tmp_path: Path,
    running: Callable[[InventoryWatcher], InventoryWatcher],
) -> None:
    ns = netns()
    build_tree(tmp_path / "sys", "tpf0")
    ip("link", "add", "tpf0", "address", PF_MAC, "type", "veth", "peer", "name", "tpf0p", ns=ns)
    w = running(
        InventoryWatcher(
            SysfsReader(str(tmp_path / "sys")),
            [UdevSource(netns=ns), NetlinkSource(netns=ns)],
            rescan_period=3600,
        )
    )
    assert pf_of(w).link is not None and pf_of(w).link.state == "up"  # the fake tree's word

    def link_is(state: str, carrier: bool) -> Callable[[list[Change]], bool]:
        def done(_: list[Change]) -> bool:
            link = pf_of(w).link
            return link is not None and (link.state, link.carrier) == (state, carrier)

        return done

    def check(changes: list[Change]) -> None:
        assert changes
        for c in changes:
            assert (c.kind, c.nic, c.pci_address, c.ifname, c.source) == (
                "nic-changed",
                PF,
                PF,
                "tpf0",
                "netlink",
            )
            assert set(c.fields) <= {"link.state", "link.carrier"}, c.fields

    # up, with the peer down: no carrier
    ip("link", "set", "tpf0", "up", ns=ns)
    changes = wait_changes(w, link_is("lowerlayerdown", False))
    check(changes)
    assert changes[0].fields["link.carrier"] == (True, False)
    assert changes[-1].fields["link.state"][1] == "lowerlayerdown"

    # the peer comes up: carrier and state follow
    ip("link", "set", "tpf0p", "up", ns=ns)
    changes = wait_changes(w, link_is("up", True))
    check(changes)
    assert ("link.carrier", (False, True)) in [f for c in changes for f in c.fields.items()]
    assert changes[-1].fields["link.state"] == (changes[-1].fields["link.state"][0], "up")

    # and down again
    ip("link", "set", "tpf0p", "down", ns=ns)
    changes = wait_changes(w, link_is("lowerlayerdown", False))
    check(changes)
    assert ("link.carrier", (True, False)) in [f for c in changes for f in c.fields.items()]

    # the peer's own messages and uevents were not ours; nothing was scanned in full
    assert w.stats["full_scans"] == 1
    assert w.stats["nic_reads"] == 0


def test_vf_netdev_appears_through_a_real_uevent(
    netns: Callable[[], str],
    tmp_path: Path,
    running: Callable[[InventoryWatcher], InventoryWatcher],
) -> None:
    ns = netns()
    fs, vfs = build_tree(tmp_path / "sys", "tvpf0")  # the PF has no real netdev here
    w = running(
        InventoryWatcher(
            SysfsReader(fs.root),
            [UdevSource(netns=ns), NetlinkSource(netns=ns)],
            rescan_period=3600,
        )
    )

    def vf1_is(change: Callable[[Change], bool]) -> Callable[[list[Change]], bool]:
        return lambda seen: any(c.pci_address == vfs[1] and change(c) for c in seen)

    # VF 1 moves from vfio-pci to its netdev driver; the kernel's uevent for the new netdev
    # (a virtual DEVPATH, no PCI address) must lead the watcher to it through class/net
    fs.unbind(vfs[1])
    fs.bind(vfs[1], "iavf")
    fs.add_netdev(vfs[1], "tvf1", mac="02:00:00:3b:02:01")
    ip("link", "add", "tvf1", "type", "veth", "peer", "name", "tvf1p", ns=ns)
    changes = wait_changes(w, vf1_is(lambda c: c.kind == "vf-changed"))
    [c] = changes  # the peer, the netlink messages: nothing else shows
    assert (c.kind, c.nic, c.vf_index, c.ifname, c.source) == (
        "vf-changed",
        PF,
        1,
        "tvf1",
        "udev",
    )
    assert c.fields == {"driver": ("vfio-pci", "iavf"), "ifname": (None, "tvf1")}

    # renamed: the uevent's `move` carries the old name
    fs.remove_netdev("tvf1")
    fs.add_netdev(vfs[1], "tvf1x", mac="02:00:00:3b:02:01")
    ip("link", "set", "tvf1", "name", "tvf1x", ns=ns)
    [c] = wait_changes(w, vf1_is(lambda c: c.ifname == "tvf1x"))
    assert (c.kind, c.source, c.fields) == ("vf-changed", "udev", {"ifname": ("tvf1", "tvf1x")})

    # gone: unbound in the tree, deleted in the kernel (netlink or udev may tell first)
    fs.unbind(vfs[1])
    ip("link", "del", "tvf1x", ns=ns)
    [c] = wait_changes(w, vf1_is(lambda c: c.ifname is None))
    assert c.kind == "vf-changed" and c.source in ("udev", "netlink")
    assert c.fields == {"driver": ("iavf", None), "ifname": ("tvf1x", None)}
    assert w.stats["full_scans"] == 1


# -- the CLI end to end ------------------------------------------------------------------------------
class Lines:
    """A subprocess's stdout and stderr, line by line, with bounded waits."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self.stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()

    def _pump(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.q.put((name, line.rstrip("\n")))
        self.q.put((name, None))

    def wait(self, pred: Callable[[str, str], bool], what: str) -> str:
        end = time.monotonic() + BOUND
        while (left := end - time.monotonic()) > 0:
            try:
                name, line = self.q.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                continue
            if name == "err":
                self.stderr.append(line)
            if pred(name, line):
                return line
        raise AssertionError(f"no {what} within {BOUND} s; stderr: {self.stderr}")

    def change(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        line = self.wait(lambda n, ln: n == "out" and pred(json.loads(ln)), what)
        return json.loads(line)


def test_cli_watch_end_to_end(netns: Callable[[], str], tmp_path: Path) -> None:
    ns = netns()
    fs, vfs = build_tree(tmp_path / "sys", "tpf0")
    config = tmp_path / "inventory.yaml"
    config.write_text("lldp: {enabled: false}\n")
    ip("link", "add", "tpf0", "address", PF_MAC, "type", "veth", "peer", "name", "tpf0p", ns=ns)
    cmd = [sys.executable, "-m", "nicinventory.cli", "--sysfs-root", fs.root]
    cmd += ["--config", str(config), "watch", "-o", "json", "--netns", ns]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        out = Lines(proc)
        out.wait(lambda n, ln: n == "err" and ln.startswith("watching 1 NICs"), "start banner")

        # the PF's veth up without its peer: carrier goes
        ip("link", "set", "tpf0", "up", ns=ns)
        c = out.change(lambda c: "link.carrier" in c["fields"], "carrier change")
        assert (c["kind"], c["source"], c["nic"], c["ifname"]) == (
            "nic-changed",
            "netlink",
            PF,
            "tpf0",
        )
        assert c["fields"]["link.carrier"] == {"old": True, "new": False}

        # the peer up: carrier back, state up (then the tree and the kernel agree again)
        ip("link", "set", "tpf0p", "up", ns=ns)
        out.change(lambda c: c["fields"].get("link.state", {}).get("new") == "up", "state up")

        # a change no event announces: only a SIGHUP rescan finds it
        fs.unbind(vfs[0])
        proc.send_signal(signal.SIGHUP)
        c = out.change(lambda c: c["source"] == "sighup", "rescan change")
        assert (c["kind"], c["pci_address"], c["vf_index"]) == ("vf-changed", vfs[0], 0)
        assert c["fields"] == {
            "driver": {"old": "iavf", "new": None},
            "ifname": {"old": "tpf0v0", "new": None},
        }

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=BOUND) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=BOUND)


def test_cli_watch_on_a_missing_namespace(netns: Callable[[], str], tmp_path: Path) -> None:
    fs, _ = build_tree(tmp_path / "sys", "tpf0")
    config = tmp_path / "inventory.yaml"
    config.write_text("lldp: {enabled: false}\n")
    name = f"{netns()}-missing"
    cmd = [sys.executable, "-m", "nicinventory.cli", "--sysfs-root", fs.root]
    try:
        res = subprocess.run(
            [*cmd, "--config", str(config), "watch", "--netns", name, "--duration", "1"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
        assert res.returncode == 2, res.stderr
        assert "does not exist" in res.stderr
        assert not os.path.exists(f"/run/netns/{name}")
    finally:
        if os.path.exists(f"/run/netns/{name}"):
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_our_link_parser_agrees_with_pyroute2(netns: Callable[[], str]) -> None:
    """The hand-written RTM_NEWLINK parser reads a real kernel dump as pyroute2 does."""
    import socket as socketmod
    import struct

    from pyroute2 import IPRoute

    from nicinventory.events import in_netns, parse_link_messages

    ns = netns()
    ip("link", "add", "tev3", "address", PF_MAC, "mtu", "9000", "type", "veth", "peer", "name",
       "tev3p", ns=ns)  # fmt: skip
    sock = in_netns(ns, lambda: socketmod.socket(socketmod.AF_NETLINK, socketmod.SOCK_RAW, 0))
    try:
        # RTM_GETLINK dump request: nlmsghdr + ifinfomsg (AF_UNSPEC).
        req = struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + bytes(16)
        sock.send(req)
        ours = {}
        while True:
            data = sock.recv(1 << 16)
            for m in parse_link_messages(data):
                ours[m.get_attr("IFLA_IFNAME")] = NetlinkSource.to_event(m)
            if struct.unpack_from("=H", data, 4)[0] == 3 or len(ours) >= 3:  # NLMSG_DONE
                break
    finally:
        sock.close()
    with IPRoute(netns=ns) as ipr:
        theirs = {m.get_attr("IFLA_IFNAME"): NetlinkSource.to_event(m) for m in ipr.get_links()}
    assert ours == theirs
    assert ours["tev3"] == HostEvent(
        source="netlink",
        subsystem="net",
        action="change",
        ifname="tev3",
        attrs={"state": "down", "carrier": False, "mtu": 9000, "mac": PF_MAC},
    )
