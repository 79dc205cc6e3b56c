"""InventoryWatcher on a fake sysfs tree: the tree is changed with the builder's mutators, the event a
kernel would send is injected, and the watcher must report exactly what changed, reading only the
NIC the event touches. Rescans (SIGHUP, periodic) must find what no event announced."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from nicinventory.diff import Change
from nicinventory.events import Emit, HostEvent
from nicinventory.fakesysfs import BuiltHost, FakeSysfs, PFSpec, VFSpec
from nicinventory.render import change_line, write_change
from nicinventory.sysfs import SysfsReader
from nicinventory.watcher import InventoryWatcher

# The bundled sample host (nicinventory/fakesysfs/sample-host.yaml)
ENS1F0 = "0000:3b:00.0"  # e810, VFs 0-5 netdev (ens1f0v<n>), 6 vfio, 7 unbound
ENS1F1 = "0000:3b:00.1"  # e810, VFs 0-3 netdev
X710 = "0000:af:00.0"  # ens5f0, link down, VFs 0-3 netdev
I82599 = "0000:d8:00.0"  # ens7f0, SR-IOV capable, no VFs
NVME = "0000:5e:00.0"
BOUND = 5.0  # upper bound of every wait; the tests never need more than a fraction of it


def vfs_of(host: BuiltHost, pf: str) -> tuple[str, ...]:
    return next(p.vf_addresses for p in host.pfs if p.pci_address == pf)


def udev(action: str, subsystem: str = "pci", **kw: Any) -> HostEvent:
    return HostEvent(source="udev", subsystem=subsystem, action=action, **kw)


def link_msg(ifname: str, **attrs: Any) -> HostEvent:
    """What NetlinkSource makes of an RTM_NEWLINK."""
    return HostEvent(source="netlink", subsystem="net", action="change", ifname=ifname, attrs=attrs)


def one(changes: list[Change], kind: str) -> Change:
    found = [c for c in changes if c.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {changes}"
    return found[0]


def take(w: InventoryWatcher, pred: Any, timeout: float = BOUND) -> list[Change]:
    """Changes from changes(timeout) up to and including the first one `pred` accepts."""
    seen: list[Change] = []
    for c in w.changes(timeout=timeout):
        seen.append(c)
        if pred(c):
            return seen
    raise AssertionError(f"no matching change within {timeout} s; got {seen}")


@pytest.fixture
def fs(sample_host: BuiltHost) -> FakeSysfs:
    return sample_host.sysfs


@pytest.fixture
def watcher(fs: FakeSysfs) -> Iterator[InventoryWatcher]:
    w = InventoryWatcher(SysfsReader(fs.root), rescan_period=3600)
    w.start()
    try:
        yield w
    finally:
        w.stop()


class Reads:
    """Records which NICs the watcher's reader reads."""

    def __init__(self, w: InventoryWatcher, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nics: list[str] = []
        real = w.reader.read_nic

        def read_nic(bdf: str) -> Any:
            self.nics.append(bdf)
            return real(bdf)

        monkeypatch.setattr(w.reader, "read_nic", read_nic)


# -- start ------------------------------------------------------------------------------------------
def test_start_is_one_full_scan_and_reports_nothing(watcher: InventoryWatcher) -> None:
    assert [n.pci_address for n in watcher.inventory.nics] == [
        ENS1F0,
        ENS1F1,
        "0000:86:00.0",
        X710,
        I82599,
    ]
    assert watcher.stats["full_scans"] == 1
    assert watcher.drain() == []
    assert watcher.stats == {"events": 0, "nic_reads": 0, "full_scans": 1}


# -- driver binding ---------------------------------------------------------------------------------
def test_unbinding_a_netdev_vf(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    vf1 = vfs_of(sample_host, ENS1F0)[1]
    fs.unbind(vf1)
    watcher.inject(udev("unbind", pci_address=vf1))
    [c] = watcher.drain()
    assert (c.kind, c.nic, c.pci_address, c.vf_index, c.source) == (
        "vf-changed",
        ENS1F0,
        vf1,
        1,
        "udev",
    )
    assert c.fields == {"driver": ("iavf", None), "ifname": ("ens1f0v1", None)}
    nic = watcher.inventory.find(ENS1F0)
    assert nic is not None and nic.sriov is not None
    vf = nic.sriov.vf(1)
    assert vf is not None and (vf.driver, vf.ifname) == (None, None)


def test_the_kernel_sequence_of_an_unbind_reports_once(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    """The kernel sends `net remove` (DEVPATH under the VF) then `pci unbind`: one change in all."""
    vf2 = vfs_of(sample_host, ENS1F0)[2]
    fs.unbind(vf2)
    watcher.inject(udev("remove", subsystem="net", pci_address=vf2, ifname="ens1f0v2"))
    watcher.inject(udev("unbind", pci_address=vf2))
    [c] = watcher.drain()
    assert c.kind == "vf-changed"
    assert c.fields == {"driver": ("iavf", None), "ifname": ("ens1f0v2", None)}
    assert watcher.stats["events"] == 2


def test_binding_an_unbound_vf_to_vfio(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    vf7 = vfs_of(sample_host, ENS1F0)[7]  # unbound in the sample host
    fs.bind(vf7, "vfio-pci")
    watcher.inject(udev("bind", pci_address=vf7))
    [c] = watcher.drain()
    assert (c.kind, c.pci_address, c.vf_index, c.ifname) == ("vf-changed", vf7, 7, None)
    assert c.fields == {"driver": (None, "vfio-pci")}


def test_unbind_then_bind_to_vfio(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    vf0 = vfs_of(sample_host, ENS1F1)[0]
    fs.unbind(vf0)
    watcher.inject(udev("unbind", pci_address=vf0))
    assert one(watcher.drain(), "vf-changed").fields["driver"] == ("iavf", None)
    fs.bind(vf0, "vfio-pci")
    watcher.inject(udev("bind", pci_address=vf0))
    [c] = watcher.drain()
    assert (c.nic, c.pci_address) == (ENS1F1, vf0)
    assert c.fields == {"driver": (None, "vfio-pci")}


# -- VF count ---------------------------------------------------------------------------------------
def test_enabling_vfs(watcher: InventoryWatcher, fs: FakeSysfs) -> None:
    added = fs.set_num_vfs(I82599, [VFSpec(), VFSpec(), VFSpec(binding="vfio")])
    watcher.inject(udev("add", pci_address=added[0]))  # the first new VF's uevent
    changes = watcher.drain()
    assert one(changes, "nic-changed").fields == {"sriov.num_vfs": (0, 3)}
    new = [c for c in changes if c.kind == "vf-added"]
    assert [(c.pci_address, c.vf_index, c.ifname) for c in new] == [
        (added[0], 0, "ens7f0v0"),
        (added[1], 1, "ens7f0v1"),
        (added[2], 2, None),
    ]
    assert {c.nic for c in changes} == {I82599}
    assert len(changes) == 4
    # the rest of the burst the kernel would send finds nothing more
    for bdf in added[1:]:
        watcher.inject(udev("add", pci_address=bdf))
        watcher.inject(udev("bind", pci_address=bdf))
    assert watcher.drain() == []


def test_shrinking_vfs(watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost) -> None:
    before = vfs_of(sample_host, ENS1F1)
    fs.set_num_vfs(ENS1F1, [VFSpec(), VFSpec()])
    watcher.inject(udev("remove", pci_address=before[3]))  # a VF that is gone: known by address
    changes = watcher.drain()
    assert one(changes, "nic-changed").fields == {"sriov.num_vfs": (4, 2)}
    removed = [c for c in changes if c.kind == "vf-removed"]
    assert [(c.pci_address, c.vf_index, c.ifname) for c in removed] == [
        (before[2], 2, "ens1f1v2"),
        (before[3], 3, "ens1f1v3"),
    ]
    assert not [c for c in changes if c.kind == "vf-added"]
    assert {c.nic for c in changes} == {ENS1F1}
    nic = watcher.inventory.find(ENS1F1)
    assert nic is not None and nic.sriov is not None
    assert [v.pci_address for v in nic.sriov.vfs] == list(before[:2])


def test_disabling_all_vfs(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    before = vfs_of(sample_host, X710)
    fs.set_num_vfs(X710, [])
    watcher.inject(udev("remove", pci_address=before[0]))
    changes = watcher.drain()
    assert sorted(c.pci_address for c in changes if c.kind == "vf-removed") == sorted(before)
    assert one(changes, "nic-changed").fields == {"sriov.num_vfs": (4, 0)}


# -- NICs coming and going --------------------------------------------------------------------------
def test_pf_hot_unplug(watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost) -> None:
    vfs = vfs_of(sample_host, X710)
    fs.set_num_vfs(X710, [])  # the kernel removes the VFs before their PF
    fs.remove_device(X710)
    watcher.inject(udev("remove", pci_address=X710))
    [c] = watcher.drain()
    assert (c.kind, c.nic, c.pci_address, c.ifname, c.source) == (
        "nic-removed",
        X710,
        X710,
        "ens5f0",
        "udev",
    )
    assert watcher.inventory.find(X710) is None
    assert watcher.inventory.find("ens5f0") is None
    # late events for the gone PF's VFs and netdev are not ours any more
    reads = watcher.stats["nic_reads"]
    watcher.inject(udev("remove", pci_address=vfs[0]))
    watcher.inject(udev("remove", subsystem="net", ifname="ens5f0v0"))
    assert watcher.drain() == []
    assert watcher.stats["nic_reads"] == reads


def test_new_pf_from_an_event_naming_only_its_address(
    watcher: InventoryWatcher, fs: FakeSysfs
) -> None:
    new = "0000:5f:00.0"
    built = fs.add_pf(PFSpec(model="e810", pci_address=new, ifname="ens9f0", vfs=[VFSpec()] * 2))
    watcher.inject(udev("add", pci_address=new))
    [c] = watcher.drain()
    assert (c.kind, c.nic, c.pci_address, c.ifname) == ("nic-added", new, new, "ens9f0")
    nic = watcher.inventory.find(new)
    assert nic is not None and nic.sriov is not None
    assert [v.pci_address for v in nic.sriov.vfs] == list(built.vf_addresses)
    assert [n.pci_address for n in watcher.inventory.nics] == sorted(
        n.pci_address for n in watcher.inventory.nics
    )
    # the new NIC's netdevs are indexed: a later event by VF ifname alone finds it
    fs.unbind(built.vf_addresses[1])
    watcher.inject(udev("remove", subsystem="net", ifname="ens9f0v1"))
    [c] = watcher.drain()
    assert (c.kind, c.nic, c.pci_address) == ("vf-changed", new, built.vf_addresses[1])


def test_non_network_function_is_not_a_nic(watcher: InventoryWatcher, fs: FakeSysfs) -> None:
    fs.add_device("0000:60:00.0", "144d", "a808", "0x010802", "nvme")
    watcher.inject(udev("add", pci_address="0000:60:00.0"))
    watcher.inject(udev("unbind", pci_address=NVME))
    assert watcher.drain() == []
    assert len(watcher.inventory.nics) == 5


# -- link -------------------------------------------------------------------------------------------
def test_pf_link_down_from_netlink(watcher: InventoryWatcher, fs: FakeSysfs) -> None:
    fs.set_link("ens1f0", up=False)
    watcher.inject(
        link_msg("ens1f0", state="down", carrier=False, mtu=1500, mac="02:00:00:3b:00:00")
    )
    [c] = watcher.drain()
    assert (c.kind, c.nic, c.ifname, c.source) == ("nic-changed", ENS1F0, "ens1f0", "netlink")
    assert c.fields == {
        "link.state": ("up", "down"),
        "link.carrier": (True, False),
        "link.speed_mbps": (100000, None),
    }
    assert watcher.stats["full_scans"] == 1
    # and back up: the speed returns from sysfs
    fs.set_link("ens1f0", up=True)
    watcher.inject(link_msg("ens1f0", state="up", carrier=True, mtu=1500))
    [c] = watcher.drain()
    assert c.fields == {
        "link.state": ("down", "up"),
        "link.carrier": (False, True),
        "link.speed_mbps": (None, 100000),
    }


def test_link_message_wins_over_sysfs(watcher: InventoryWatcher) -> None:
    """The message is newer than anything sysfs says: its values are taken as they are."""
    watcher.inject(link_msg("ens1f0", state="lowerlayerdown", carrier=False, mtu=9000))
    [c] = watcher.drain()
    assert c.fields == {
        "link.state": ("up", "lowerlayerdown"),
        "link.carrier": (True, False),
        "link.mtu": (1500, 9000),
    }
    nic = watcher.inventory.find(ENS1F0)
    assert nic is not None and nic.link is not None
    assert (nic.link.state, nic.link.carrier, nic.link.speed_mbps) == (
        "lowerlayerdown",
        False,
        100000,
    )
    # the same message again changes nothing
    watcher.inject(link_msg("ens1f0", state="lowerlayerdown", carrier=False, mtu=9000))
    assert watcher.drain() == []


def test_link_message_for_a_vf_netdev_changes_nothing(watcher: InventoryWatcher) -> None:
    watcher.inject(link_msg("ens1f0v0", state="down", carrier=False))
    assert watcher.drain() == []


def test_link_message_for_a_pf_that_is_down_in_sysfs(watcher: InventoryWatcher) -> None:
    watcher.inject(link_msg("ens5f0", state="up", carrier=True))
    [c] = watcher.drain()
    assert (c.pci_address, c.fields["link.state"], c.fields["link.carrier"]) == (
        X710,
        ("down", "up"),
        (False, True),
    )


# -- netdev names -----------------------------------------------------------------------------------
def test_new_netdev_resolves_through_class_net(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    """A VF moved from vfio-pci to its netdev driver: the net `add` may carry no PCI address (a
    veth stands in for it here), so the watcher finds the VF through class/net/<ifname>."""
    vf6 = vfs_of(sample_host, ENS1F0)[6]
    fs.unbind(vf6)
    fs.bind(vf6, "iavf")
    fs.add_netdev(vf6, "ens1f0v6", mac="02:00:00:00:06:06")
    watcher.inject(udev("add", subsystem="net", ifname="ens1f0v6"))
    [c] = watcher.drain()
    assert (c.kind, c.nic, c.pci_address, c.vf_index, c.ifname) == (
        "vf-changed",
        ENS1F0,
        vf6,
        6,
        "ens1f0v6",
    )
    assert c.fields == {"driver": ("vfio-pci", "iavf"), "ifname": (None, "ens1f0v6")}


def test_rename_of_a_vf_netdev(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    vf3 = vfs_of(sample_host, ENS1F1)[3]
    fs.remove_netdev("ens1f1v3")
    fs.add_netdev(vf3, "data0", mac="02:00:00:3b:12:03")
    watcher.inject(udev("move", subsystem="net", ifname="data0", old_ifname="ens1f1v3"))
    [c] = watcher.drain()
    assert (c.kind, c.pci_address, c.ifname) == ("vf-changed", vf3, "data0")
    assert c.fields == {"ifname": ("ens1f1v3", "data0")}


def test_move_is_found_by_its_old_name(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    """By the time the move is applied the new name may be gone too (moved into a pod's netns):
    only old_ifname still leads to the NIC."""
    vf0 = vfs_of(sample_host, ENS1F0)[0]
    fs.remove_netdev("ens1f0v0")
    watcher.inject(udev("move", subsystem="net", ifname="net1", old_ifname="ens1f0v0"))
    [c] = watcher.drain()
    assert (c.kind, c.pci_address, c.fields) == ("vf-changed", vf0, {"ifname": ("ens1f0v0", None)})


def test_rename_of_a_pf_netdev(watcher: InventoryWatcher, fs: FakeSysfs) -> None:
    fs.remove_netdev("ens7f0")
    fs.add_netdev(I82599, "uplink0", mac="02:00:00:d8:00:00", speed=10000)
    watcher.inject(udev("move", subsystem="net", ifname="uplink0", old_ifname="ens7f0"))
    [c] = watcher.drain()
    assert (c.kind, c.pci_address, c.ifname) == ("nic-changed", I82599, "uplink0")
    assert c.fields["ifname"] == ("ens7f0", "uplink0")
    # the new name now leads to the NIC, and link messages for it apply
    watcher.inject(link_msg("uplink0", state="down", carrier=False))
    [c] = watcher.drain()
    assert c.fields["link.state"] == ("up", "down")


def test_unknown_netdevs_are_ignored_without_reading(
    watcher: InventoryWatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(watcher, monkeypatch)
    watcher.inject(udev("add", subsystem="net", ifname="veth12ab"))
    watcher.inject(link_msg("veth12ab", state="up", carrier=True))
    watcher.inject(udev("remove", subsystem="net", ifname="br0"))
    watcher.inject(udev("move", subsystem="net", ifname="eth9", old_ifname="eth8"))
    watcher.inject(udev("remove", pci_address="0000:99:00.0"))  # never seen, not in the tree
    assert watcher.drain() == []
    assert reads.nics == []
    assert watcher.stats == {"events": 5, "nic_reads": 0, "full_scans": 1}


# -- cost: one NIC per event ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case",
    ["vf-unbind", "vf-net-remove-by-name", "pf-net-change", "vf-add", "pf-remove", "net-add"],
)
def test_each_event_reads_exactly_the_nic_it_touches(
    case: str,
    watcher: InventoryWatcher,
    fs: FakeSysfs,
    sample_host: BuiltHost,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vfs0, vfs1 = vfs_of(sample_host, ENS1F0), vfs_of(sample_host, ENS1F1)
    if case == "vf-unbind":
        fs.unbind(vfs0[0])
        event, owner = udev("unbind", pci_address=vfs0[0]), ENS1F0
    elif case == "vf-net-remove-by-name":
        fs.unbind(vfs1[1])
        event, owner = udev("remove", subsystem="net", ifname="ens1f1v1"), ENS1F1
    elif case == "pf-net-change":  # a udev change: no attrs, so a re-read
        fs.set_link("ens1f1", up=False)
        event, owner = udev("change", subsystem="net", pci_address=ENS1F1, ifname="ens1f1"), ENS1F1
    elif case == "vf-add":
        new = fs.set_num_vfs(I82599, [VFSpec()])
        event, owner = udev("add", pci_address=new[0]), I82599
    elif case == "pf-remove":
        fs.remove_device(I82599)
        event, owner = udev("remove", pci_address=I82599), I82599
    else:
        vf6 = vfs0[6]
        fs.unbind(vf6)
        fs.bind(vf6, "iavf")
        fs.add_netdev(vf6, "fresh0", mac="02:00:00:00:00:06")
        event, owner = udev("add", subsystem="net", ifname="fresh0"), ENS1F0
    reads = Reads(watcher, monkeypatch)
    watcher.inject(event)
    changes = watcher.drain()
    assert changes, "the mutation must show"
    assert {c.nic for c in changes} == {owner}
    assert reads.nics == [owner]
    assert watcher.stats == {"events": 1, "nic_reads": 1, "full_scans": 1}


# -- rescans ----------------------------------------------------------------------------------------
def test_request_rescan_finds_a_change_no_event_announced(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    vf = vfs_of(sample_host, ENS1F1)[2]
    fs.unbind(vf)
    fs.set_link("ens7f0", up=False)
    assert watcher.drain() == []  # nothing announced it
    watcher.request_rescan()
    changes = watcher.drain()
    assert {c.source for c in changes} == {"sighup"}
    assert one(changes, "vf-changed").pci_address == vf
    assert one(changes, "nic-changed").fields["link.state"] == ("up", "down")
    assert len(changes) == 2
    assert watcher.stats["full_scans"] == 2
    watcher.request_rescan("sighup")
    assert watcher.drain() == []


def test_request_rescan_through_changes(watcher: InventoryWatcher, fs: FakeSysfs) -> None:
    fs.remove_device(I82599)
    watcher.request_rescan("sighup")
    [c] = take(watcher, lambda c: True)
    assert (c.kind, c.pci_address, c.source) == ("nic-removed", I82599, "sighup")


def test_periodic_rescan(fs: FakeSysfs, sample_host: BuiltHost) -> None:
    w = InventoryWatcher(SysfsReader(fs.root), rescan_period=0.2)
    w.start()
    try:
        vf = vfs_of(sample_host, ENS1F0)[3]
        fs.unbind(vf)  # no event: only a rescan can see it
        [c] = take(w, lambda c: True)
        assert (c.kind, c.pci_address, c.source) == ("vf-changed", vf, "rescan")
        assert c.fields["driver"] == ("iavf", None)
        assert w.stats["full_scans"] >= 2
    finally:
        w.stop()


def test_periodic_rescan_when_changes_is_polled_in_short_slices(
    fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    """A caller with its own loop asks for changes(timeout=<short>) again and again; the rescan
    period is the watcher's, so the rescan must still come."""
    w = InventoryWatcher(SysfsReader(fs.root), rescan_period=0.3)
    w.start()
    try:
        vf = vfs_of(sample_host, ENS1F0)[4]
        fs.unbind(vf)
        got: list[Change] = []
        for _ in range(int(BOUND / 0.05)):
            got.extend(w.changes(timeout=0.05))
            if got:
                break
        assert [(c.kind, c.pci_address, c.source) for c in got] == [("vf-changed", vf, "rescan")]
    finally:
        w.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_busy_event_stream_does_not_starve_the_rescan(
    fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    """Events that keep the queue non-empty (a flapping link) must not postpone the rescan for ever:
    it is the safety net for events that were lost. The clock is fake: time passes only between
    changes, by a quarter of the rescan period each."""
    clock = FakeClock()
    w = InventoryWatcher(SysfsReader(fs.root), rescan_period=1.0, clock=clock)
    w.start()
    vf = vfs_of(sample_host, ENS1F0)[5]
    fs.unbind(vf)  # its event was lost
    seen: list[Change] = []

    def consume() -> None:
        w.inject(link_msg("ens1f0", state="down", carrier=False))
        for c in w.changes(timeout=3600):
            seen.append(c)
            if c.source == "rescan" or len(seen) >= 40:
                return
            clock.now += 0.25
            up = len(seen) % 2 == 1  # down, up, down, ...: every message is a change
            w.inject(link_msg("ens1f0", state="up" if up else "down", carrier=up))

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        consumer.join(BOUND)
        assert not consumer.is_alive(), f"changes() stalled after {seen}"
    finally:
        w.stop()
        consumer.join(BOUND)
    sources = [c.source for c in seen]
    assert "rescan" in sources, f"no rescan in {len(seen)} changes while events kept coming"
    assert sources.index("rescan") <= 5
    rescan = [c for c in seen if c.source == "rescan"]
    assert any(c.kind == "vf-changed" and c.pci_address == vf for c in rescan)


# -- sources and lifecycle --------------------------------------------------------------------------
class BoomSource:
    name = "boom"

    def run(self, emit: Emit, stop: threading.Event) -> None:
        raise RuntimeError("netlink socket exploded")


class GatedSource:
    """Emits its events once the test says so, then waits for stop like a real source."""

    name = "gated"

    def __init__(self, events: list[HostEvent]) -> None:
        self.events = events
        self.go = threading.Event()
        self.finished = threading.Event()

    def run(self, emit: Emit, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if self.go.wait(0.05):
                    self.go.clear()
                    for e in self.events:
                        emit(e)
        finally:
            self.finished.set()


def test_a_source_that_raises_does_not_kill_the_watcher(
    fs: FakeSysfs, sample_host: BuiltHost, caplog: pytest.LogCaptureFixture
) -> None:
    vf = vfs_of(sample_host, ENS1F1)[0]
    good = GatedSource([HostEvent("gated", "pci", "unbind", pci_address=vf)])
    w = InventoryWatcher(SysfsReader(fs.root), [BoomSource(), good], rescan_period=3600)
    with caplog.at_level(logging.ERROR, logger="nicinventory.events"):
        w.start()
        try:
            fs.unbind(vf)
            good.go.set()
            [c] = take(w, lambda c: True)
            assert (c.kind, c.pci_address, c.source) == ("vf-changed", vf, "gated")
            boom = next(t for t in w._threads if t.name.endswith("boom"))
            boom.join(BOUND)
            assert not boom.is_alive()
            # still working: injected events and rescans
            fs.unbind(vfs_of(sample_host, ENS1F1)[1])
            w.request_rescan()
            assert one(w.drain(), "vf-changed").source == "sighup"
        finally:
            w.stop()
    assert any("boom" in r.getMessage() and r.exc_info for r in caplog.records)
    assert good.finished.is_set()


def test_stop_ends_changes_and_sources(fs: FakeSysfs) -> None:
    src = GatedSource([])
    w = InventoryWatcher(SysfsReader(fs.root), [src], rescan_period=3600)
    w.start()
    got: list[Change] = []
    consumer = threading.Thread(target=lambda: got.extend(w.changes()), daemon=True)
    consumer.start()
    try:
        w.stop()
        consumer.join(BOUND)
        assert not consumer.is_alive(), "changes() kept running after stop()"
        assert src.finished.wait(BOUND)
        assert got == []
        # a watcher that is stopped yields nothing and returns at once
        assert list(w.changes()) == []
    finally:
        w.stop()


def test_events_queued_before_changes_is_called_are_applied(
    watcher: InventoryWatcher, fs: FakeSysfs
) -> None:
    fs.set_link("ens1f1", up=False)
    watcher.inject(udev("change", subsystem="net", pci_address=ENS1F1, ifname="ens1f1"))
    [c] = take(watcher, lambda c: True)
    assert (c.kind, c.ifname, c.source) == ("nic-changed", "ens1f1", "udev")


# -- rendering of changes ---------------------------------------------------------------------------
def test_write_change_formats(
    watcher: InventoryWatcher, fs: FakeSysfs, sample_host: BuiltHost
) -> None:
    vf = vfs_of(sample_host, ENS1F0)[1]
    fs.unbind(vf)
    watcher.inject(udev("unbind", pci_address=vf))
    [c] = watcher.drain()

    out = io.StringIO()
    write_change(c, "json", out)
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == c.to_dict()
    assert json.loads(line)["fields"]["driver"] == {"old": "iavf", "new": None}

    out = io.StringIO()
    write_change(c, "yaml", out)
    docs = [d for d in yaml.safe_load_all(out.getvalue()) if d is not None]
    assert docs == [c.to_dict()]

    out = io.StringIO()
    write_change(c, "table", out)
    assert out.getvalue() == change_line(c) + "\n"
    text = change_line(c)
    assert "vf-changed" in text and "[udev]" in text
    assert f"{vf} (VF 1 of {ENS1F0})" in text
    assert "driver: iavf -> -" in text and "ifname: ens1f0v1 -> -" in text
