"""Discovery of a big node: 8 E810 PFs × 128 VFs (1,024 VFs) in a fake sysfs tree.

Goals (the project's issue): a full scan in ≤ 50 ms and ≤ 2× a floor measured in the same run; an
event re-reads one NIC, never the whole host. The floor is the reader's own I/O, recorded from one
real scan and replayed without building anything: the ratio is what Python costs on top of the
syscalls, which says more about the code than the absolute figure, since a VM's syscalls can cost
several times a bare-metal host's.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from benchmarks import Metric, median, p90, sample_interleaved, time_ms
from nicinventory.events import HostEvent
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec
from nicinventory.model import Inventory, TorPort
from nicinventory.render import dump
from nicinventory.sysfs import SysfsReader
from nicinventory.tor import TorMap
from nicinventory.watcher import InventoryWatcher

PFS = 8
VFS_PER_PF = 128  # E810's sriov_totalvfs
SCAN_GOAL_MS = 50.0
FLOOR_RATIO_GOAL = 2.0
# One bus per PF, as one card per slot gives: a PF's 128 VFs (RIDs +16..+143) stay on its bus.
PF_BUSES = ("17", "31", "4b", "65", "98", "b1", "ca", "e3")
VFIO_DRIVER = "vfio-pci"
# sysfs lives in memory (kernfs), so tmpfs is the closer stand-in; on this project's VMs it also
# builds the 30,000-entry tree in half a second where ext4 takes up to twenty.
SHM = "/dev/shm"


def tree_base() -> str | None:
    """Where to build the fake tree: /dev/shm when usable, else the default temporary folder."""
    return SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK) else None


@dataclass(frozen=True)
class Host:
    root: str
    fs: FakeSysfs
    pfs: tuple[str, ...]  # PF PCI addresses
    ifnames: tuple[str, ...]  # PF netdevs, in the same order
    vfs: dict[str, tuple[str, ...]]  # PF -> its VFs' PCI addresses
    bindings: tuple[str, ...]  # VF index -> binding, the same on every PF
    tor: TorMap


def vf_bindings() -> tuple[str, ...]:
    """A node's usual mix: most VFs handed to pods as netdevs, a DPDK pool on vfio-pci, a few spare."""
    return tuple(
        "netdev" if i < 96 else "vfio" if i < 124 else "unbound" for i in range(VFS_PER_PF)
    )


def build_host(root: str) -> Host:
    fs = FakeSysfs(root)
    bindings = vf_bindings()
    pfs, ifnames, vfs, tor = [], [], {}, {}
    for i, bus in enumerate(PF_BUSES):
        bdf, ifname = f"0000:{bus}:00.0", f"ens{i + 1}f0"
        built = fs.add_pf(
            PFSpec(
                model="e810",
                pci_address=bdf,
                ifname=ifname,
                numa_node=0 if i < PFS // 2 else 1,
                link_up=i != PFS - 1,  # one cable out, so the scan also meets a down link
                mtu=9000,
                vfs=[VFSpec(binding=b) for b in bindings],
            )
        )
        pfs.append(bdf)
        ifnames.append(ifname)
        vfs[bdf] = built.vf_addresses
        tor[bdf] = TorPort(switch=f"tor-{'ab'[i % 2]}", port=f"Ethernet1/{i // 2 + 1}")
    return Host(root, fs, tuple(pfs), tuple(ifnames), vfs, bindings, TorMap(tor))


# -- the floor: the reader's own I/O, replayed --------------------------------------------------
# The os functions every file access in Python ends in: os.path.isdir/exists call os.stat,
# lexists/islink os.lstat, realpath os.lstat and os.readlink. Patching them on the os module catches
# the reader's calls however it spells them (os.path.join(...), a local alias taken at call time).
_RECORDED = ("open", "read", "close", "readlink", "listdir", "scandir", "stat", "lstat", "access")


class _RecordedEntry:
    """A DirEntry that logs the stat its is_dir()/is_file() make, which happen in C, not os.stat.

    They stat only a symlink (d_type says what anything else is on sysfs, tmpfs and ext4), once.
    """

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self._entry, self._followed = entry, False
        self.name, self.path = entry.name, entry.path

    def _follow(self) -> None:
        if not self._followed and self._entry.is_symlink():
            self._followed = True
            with suppress(OSError):
                os.stat(self.path)  # the patched one: logs the same stat, failing or not

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks:
            self._follow()
        return self._entry.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks:
            self._follow()
        return self._entry.is_file(follow_symlinks=follow_symlinks)

    def __getattr__(self, name: str) -> Any:  # is_symlink, inode...: no syscall; stat(): rare
        return getattr(self._entry, name)


class _RecordedScandir:
    """os.scandir's iterator, read to the end at once (that is its syscall work), then replayed."""

    def __init__(self, entries: list[_RecordedEntry]) -> None:
        self._entries = entries

    def __iter__(self) -> Iterator[_RecordedEntry]:
        return iter(self._entries)

    def __enter__(self) -> _RecordedScandir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._entries = []


@contextmanager
def recording_io() -> Iterator[list[tuple[Any, ...]]]:
    """Log (name, args, result-or-None-on-error) for each of the os calls above made inside."""
    log: list[tuple[Any, ...]] = []
    originals = {name: getattr(os, name) for name in _RECORDED}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def recorder(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
                if name == "scandir":
                    with result as it:
                        entries = list(it)
            except OSError:
                log.append((name, args, None))
                raise
            if name == "scandir":
                log.append((name, args, True))
                return _RecordedScandir([_RecordedEntry(e) for e in entries])
            log.append((name, args, result))
            return result

        return recorder

    for name, fn in originals.items():
        setattr(os, name, wrap(name, fn))
    try:
        yield log
    finally:
        for name, fn in originals.items():
            setattr(os, name, fn)


def _make_cat(flags: int, size: int) -> Callable[[str], None]:
    """open + one read + close, exactly as the reader's read_attr does them, keeping nothing."""
    _open, _read, _close = os.open, os.read, os.close

    def cat(path: str) -> None:
        try:
            fd = _open(path, flags)
        except OSError:
            return
        try:
            _read(fd, size)
        except OSError:
            pass
        finally:
            _close(fd)

    return cat


def _drain_scandir(path: str) -> None:
    with os.scandir(path) as it:
        for _ in it:
            pass


FloorPlan = list[tuple[Callable[[str], object], str]]


def compile_floor(log: list[tuple[Any, ...]]) -> tuple[FloorPlan, Counter[str]]:
    """The recorded calls as (function, path) steps, in the reader's order.

    open/read/close on one fd become one `cat` step. Any other use of a descriptor means the reader
    changed how it reads; this refuses it rather than replaying something else.
    """
    plain: dict[str, Callable[[str], object]] = {
        "readlink": os.readlink,
        "listdir": os.listdir,
        "scandir": _drain_scandir,
        "stat": os.stat,
        "lstat": os.lstat,
    }
    cats: dict[tuple[int, int], Callable[[str], None]] = {}
    plan: FloorPlan = []
    counts: Counter[str] = Counter()
    i = 0
    while i < len(log):
        name, args, result = log[i]
        if name == "open":
            path, flags = args[0], args[1]
            size = 0
            if result is not None:  # opened: expect read(fd, n), close(fd)
                steps = log[i + 1 : i + 3]
                if [(s[0], s[1][0]) for s in steps] != [("read", result), ("close", result)]:
                    raise RuntimeError(f"unexpected I/O after open({path!r}): {steps!r}")
                size = steps[0][1][1]
                i += 2
            cat = cats.get((flags, size)) or cats.setdefault((flags, size), _make_cat(flags, size))
            plan.append((cat, path))
            counts["open+read"] += 1
        elif name in plain:
            plan.append((plain[name], args[0]))
            counts[name] += 1
        elif name == "access":
            plan.append((lambda p, mode=args[1]: os.access(p, mode), args[0]))
            counts[name] += 1
        else:
            raise RuntimeError(f"unexpected {name}{args!r} outside an open/close pair")
        i += 1
    return plan, counts


def run_floor(plan: FloorPlan) -> None:
    for fn, path in plan:
        # Not contextlib.suppress: a context manager per syscall would inflate the floor itself.
        try:  # noqa: SIM105
            fn(path)
        except OSError:
            pass  # the reader met the same error (a missing optional attribute) and moved on


# -- incremental updates ------------------------------------------------------------------------
@dataclass
class EventRun:
    samples: list[float]
    nic_reads: set[int]  # NICs re-read per event, as the watcher counts them
    full_scans: int  # full scans the events caused (must be 0)


def _timed_event(watcher: InventoryWatcher, event: HostEvent, run: EventRun) -> None:
    reads, scans = watcher.stats["nic_reads"], watcher.stats["full_scans"]
    run.samples.append(time_ms(lambda: watcher.apply(event)))
    run.nic_reads.add(watcher.stats["nic_reads"] - reads)
    run.full_scans += watcher.stats["full_scans"] - scans


def netlink_link_changes(host: Host, watcher: InventoryWatcher, events: int) -> EventRun:
    """RTM_NEWLINK on one PF, carrier flapping, so every event changes the inventory."""
    run = EventRun([], set(), 0)
    ifname = host.ifnames[0]
    for i in range(events):
        up = i % 2 == 1
        attrs = {"state": "up" if up else "down", "carrier": up, "mtu": 9000}
        event = HostEvent("netlink", "net", "change", ifname=ifname, attrs=attrs)
        _timed_event(watcher, event, run)
    return run


def udev_bind_unbind(host: Host, watcher: InventoryWatcher, events: int) -> EventRun:
    """A vfio-pci VF unbound then bound again (the sysfs change is made untimed, before each event)."""
    run = EventRun([], set(), 0)
    pf = host.pfs[PFS // 2]
    vf = host.vfs[pf][host.bindings.index("vfio")]
    for i in range(events):
        action = "unbind" if i % 2 == 0 else "bind"
        if action == "unbind":
            host.fs.unbind(vf)
        else:
            host.fs.bind(vf, VFIO_DRIVER)
        _timed_event(watcher, HostEvent("udev", "pci", action, pci_address=vf), run)
    return run


def _event_metric(name: str, label: str, run: EventRun, scan_ms: float, reads: int) -> Metric:
    med = median(run.samples)
    # The udev event must re-read its PF (0 would leave the inventory stale); the netlink one
    # carries the link state itself and re-reads no NIC at all. Neither may rescan the host.
    ok = run.full_scans == 0 and run.nic_reads == {reads}
    return Metric(
        name=name,
        label=f"{label} ({reads} NIC re-read, {med / scan_ms:.2f}× a full scan)",
        unit="ms",
        median=med,
        p90=p90(run.samples),
        goal=f"{reads} NIC re-read, no rescan",
        met=ok,
        runs=len(run.samples),
        extra={
            "nic_reads_per_event": sorted(run.nic_reads),
            "full_scans": run.full_scans,
            "vs_full_scan": round(med / scan_ms, 4),
        },
    )


# -- the benchmark --------------------------------------------------------------------------------
def run(quick: bool = False) -> list[Metric]:
    runs, warmup, events = (3, 1, 4) if quick else (40, 5, 60)
    base = tree_base()
    with tempfile.TemporaryDirectory(prefix="nicinventory-bench-", dir=base) as tmp:
        host = build_host(tmp)
        reader = SysfsReader(tmp, host.tor.lookup)
        inventory = reader.scan()
        _check(host, inventory)

        with recording_io() as log:
            reader.scan()
        plan, counts = compile_floor(log)
        if min(counts["open+read"], counts["readlink"]) < PFS * VFS_PER_PF:  # one of each per VF
            raise RuntimeError(f"the recorder missed the reader's I/O (saw {dict(counts)})")
        timings = sample_interleaved(
            {"scan": reader.scan, "floor": lambda: run_floor(plan)}, runs, warmup
        )
        scan, floor = timings["scan"], timings["floor"]
        scan_med, floor_med = median(scan), median(floor)
        ratio = scan_med / floor_med

        watcher = InventoryWatcher(reader)
        watcher.start()
        link_run = netlink_link_changes(host, watcher, events)
        bind_run = udev_bind_unbind(host, watcher, events)

        json_out = io.StringIO()

        def list_json() -> None:
            json_out.seek(0)
            json_out.truncate()
            dump(inventory.to_dict(), "json", json_out)

        ser = sample_interleaved({"to_dict": inventory.to_dict, "json": list_json}, runs, warmup)

    vfs = PFS * VFS_PER_PF
    return [
        Metric(
            name="discovery.full_scan",
            label=f"full scan, {PFS} PFs × {VFS_PER_PF} VFs",
            unit="ms",
            median=scan_med,
            p90=p90(scan),
            goal=f"≤ {SCAN_GOAL_MS:g} ms",
            met=scan_med <= SCAN_GOAL_MS,
            runs=len(scan),
            extra={"nics": PFS, "vfs": vfs, "tree_under": base or tempfile.gettempdir()},
        ),
        Metric(
            name="discovery.floor",
            label="floor: the same I/O, no objects",
            unit="ms",
            median=floor_med,
            p90=p90(floor),
            runs=len(floor),
            extra={"io_ops": dict(sorted(counts.items())), "io_ops_total": sum(counts.values())},
        ),
        Metric(
            name="discovery.scan_to_floor",
            label="full scan / floor (medians)",
            unit="x",
            median=ratio,
            p90=None,
            goal=f"≤ {FLOOR_RATIO_GOAL:g}×",
            met=ratio <= FLOOR_RATIO_GOAL,
            runs=len(scan),
        ),
        _event_metric(
            "discovery.incremental_link_change",
            "event: netlink link change on a PF",
            link_run,
            scan_med,
            reads=0,
        ),
        _event_metric(
            "discovery.incremental_vf_bind",
            "event: udev bind/unbind of a VF",
            bind_run,
            scan_med,
            reads=1,
        ),
        Metric(
            name="discovery.to_dict",
            label=f"Inventory.to_dict(), {vfs} VFs",
            unit="ms",
            median=median(ser["to_dict"]),
            p90=p90(ser["to_dict"]),
            runs=len(ser["to_dict"]),
        ),
        Metric(
            name="discovery.list_json",
            label="to_dict() + JSON text (what `list -o json` pays)",
            unit="ms",
            median=median(ser["json"]),
            p90=p90(ser["json"]),
            runs=len(ser["json"]),
            extra={"bytes": len(json_out.getvalue())},
        ),
    ]


def _check(host: Host, inv: Inventory) -> None:
    """A fast scan that found the wrong host would be a meaningless figure: check what it found."""
    found = {n.pci_address: n for n in inv.nics}
    if sorted(found) != sorted(host.pfs):
        raise RuntimeError(f"scan found NICs {sorted(found)}, built {sorted(host.pfs)}")
    for bdf, nic in found.items():
        got = tuple(v.pci_address for v in nic.sriov.vfs) if nic.sriov else ()
        if got != host.vfs[bdf]:
            raise RuntimeError(f"scan found {len(got)} VFs on {bdf}, built {len(host.vfs[bdf])}")
