"""The TOR shim pushing port configs to real switches on this machine (issue 5).

Goals, all measured in one run:

- netconfd on loopback (Debian's netconfd behind sshd with the OpenConfig modules, candidate
  datastore, tests/torshim/netconf_server.py): the median latency of one port change end to end
  ≤ 10 ms with our NETCONF session, reported beside the same change with stock ncclient I/O
  (`options["fast_io"] = False`) and their ratio.
- 50 changes for one switch (50 distinct ports) submitted together are ≥ 10× faster than the same
  50 submitted one by one, on netconfd and on the Linux switch over SSH
  (tests/torshim/linux_switch.py: a netns with one bridge per VLAN, sshd inside, `linux` driver).

One port change is `SwitchWorker.submit({port: config}, deadline)` and waiting for its future, on a
worker whose session is already open: the worker's hand-off, then the driver's converge: read,
diff, render and, on netconfd, lock candidate, discard-changes, edit-config, commit confirmed
(persist), read back (the verify), confirm, unlock (8 RPCs; the verify between commit and confirm
is the read-back, so converge does not read again); on the Linux switch `ip -j -d link show`, the
config lines (joined with `&&` into as few shell lines as fit, each ending `; echo rc=$?`, echo and
prompt awaited), and the read back. The port alternates between two VLAN sets, so every change
changes something; each result is checked (committed, verified, the port among its changes)
outside the timed span.

Floors taken in the same run, alternating with the changes so noise hits both alike:
- netconfd: the same 8 RPCs sent straight through an ncclient Manager on our session (XML made
  beforehand, no parsing, no diff): what a change cannot go below on this server.
- Linux switch: one config line (`true; echo rc=$?`) on a session of its own: one round trip, of
  which a transaction needs 2 (read, read back) + one per batch of joined config lines: 3 for one
  change, 4 for 50 ports moving to one VLAN.

Session set-up (SSH, hello, our probe; login shell on the Linux switch) is excluded from the changes
and reported as its own figure. "50 changes" alternates rounds of one-by-one (submit, wait, next)
and together (submit all 50, then wait all: the worker merges what is queued into one
transaction); each phase changes all 50 ports, and the worker's transaction count is reported.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from benchmarks import Metric, median, p90, p99
from tests.torshim import linux_switch as lsw
from tests.torshim import netconf_server as ncs
from torshim.drivers.base import SwitchDriver, SwitchParams
from torshim.drivers.cli_session import with_rc
from torshim.drivers.linux import LinuxSwitch
from torshim.drivers.openconfig import OpenConfigDriver, parse_ports, read_filter, render_config
from torshim.model import ApplyResult, PortChange, PortConfig
from torshim.netconf import NetconfSession
from torshim.worker import SwitchWorker

CHANGE_GOAL_MS = 10.0
SPEEDUP_GOAL = 10.0
BATCH = 50
WAIT = 60.0  # bound of every wait; a working run never gets near it

NC_BATCH = tuple(f"Ethernet1/{i}" for i in range(1, BATCH + 1))
NC_OURS, NC_STOCK, NC_FLOOR = (f"Ethernet1/{i}" for i in range(BATCH + 1, BATCH + 4))
NC_PORTS = (*NC_BATCH, NC_OURS, NC_STOCK, NC_FLOOR)
TRUNKS = (frozenset({100, 101}), frozenset({200, 201}))  # the single changes alternate these
BATCH_TRUNKS = (frozenset({110, 111}), frozenset({210, 211}))
RPCS = (
    "get-config (read)",
    "lock",
    "discard-changes",
    "edit-config",
    "commit confirmed",
    "get-config (verify)",
    "confirm",
    "unlock",
)

LX_BATCH = tuple(f"swp{i}" for i in range(1, BATCH + 1))
LX_ONE = f"swp{BATCH + 1}"
LX_PORTS = (*LX_BATCH, LX_ONE)
ACCESS = (100, 200)  # no 8021q here: access ports (a port moves between two VLAN bridges)
BATCH_ACCESS = (110, 210)


@dataclass(frozen=True)
class Plan:
    ours: int  # timed single changes with our session (and as many floors)
    stock: int  # timed single changes with stock ncclient I/O (~0.9 s each)
    warmup: int
    connects: int  # session set-ups timed, per kind
    nc_rounds: int  # rounds of (50 one by one, 50 together) on netconfd
    linux: int  # timed single changes on the Linux switch (and as many line floors)
    lx_rounds: int


QUICK = Plan(ours=10, stock=2, warmup=2, connects=2, nc_rounds=1, linux=6, lx_rounds=1)
FULL = Plan(ours=100, stock=20, warmup=5, connects=5, nc_rounds=10, linux=60, lx_rounds=7)


# -- what is there ----------------------------------------------------------------------------------
def netconfd_missing() -> str | None:
    """Why the netconfd part cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a private user, sshd)"
    absent = [p for p in (ncs.NETCONFD, ncs.SSHD, ncs.SUBSYSTEM) if not Path(p).exists()]
    if absent:
        return f"{', '.join(absent)} missing (apt-get install netconfd openssh-server)"
    if not ncs.YANG_DIR.is_dir():
        return f"no OpenConfig YANG modules in {ncs.YANG_DIR}"
    if shutil.which("useradd") is None:
        return "useradd missing"
    return None


def linux_missing() -> str | None:
    """Why the Linux switch part cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, a private user, sshd)"
    absent = [p for p in (lsw.SSHD, lsw.CAPSH) if not Path(p).exists()]
    absent += [t for t in ("setcap", "useradd", "ip") if shutil.which(t) is None]
    if absent:
        return f"{', '.join(absent)} missing (apt-get install openssh-server libcap2-bin iproute2)"
    return None


def skipped(name: str, what: str, reason: str) -> Metric:
    print(f"benchmarks: torshim: {what} skipped: {reason}", file=sys.stderr)
    return Metric(
        name=f"{name}.skipped",
        label=f"{what}: SKIPPED, {reason}",
        unit="count",
        median=0,
        p90=None,
        extra={"skipped": reason},
    )


# -- driving a worker -------------------------------------------------------------------------------
def prepared(driver: SwitchDriver) -> Callable[[], SwitchDriver]:
    """A worker's driver factory handing out `driver` (session already open) first, then new ones
    (only after a lost session: never in a working run)."""
    first = [driver]

    def factory() -> SwitchDriver:
        return first.pop() if first else type(driver)(driver.params)

    return factory


def _check(results: Sequence[ApplyResult], ports: Sequence[str], where: str) -> None:
    """Every change really happened: committed, verified, each port among the changes."""
    changed = {ch.port for r in results for ch in r.changes}
    bad = [r for r in results if not (r.committed and r.verified)]
    missing = sorted(set(ports) - changed)
    if bad or missing:
        raise RuntimeError(f"{where}: not every change was made (missing {missing}, {bad[:1]})")


def one_change(worker: SwitchWorker, cfg: PortConfig) -> float:
    """Submit one port's config, wait for it: milliseconds end to end."""
    t0 = time.perf_counter_ns()
    result = worker.submit({cfg.port: cfg}, time.monotonic() + WAIT).result(WAIT)
    ms = (time.perf_counter_ns() - t0) / 1e6
    _check([result], [cfg.port], worker.name)
    return ms


def batch_phase(
    worker: SwitchWorker, cfgs: Sequence[PortConfig], together: bool
) -> tuple[float, int]:
    """The configs as separate requests, one by one or all submitted before any wait:
    (milliseconds, transactions the worker ran)."""
    tx0 = worker.transactions
    t0 = time.perf_counter_ns()
    if together:
        futs = [worker.submit({c.port: c}, time.monotonic() + WAIT) for c in cfgs]
        results = [f.result(WAIT) for f in futs]
    else:
        results = [worker.submit({c.port: c}, time.monotonic() + WAIT).result(WAIT) for c in cfgs]
    ms = (time.perf_counter_ns() - t0) / 1e6
    _check(results, [c.port for c in cfgs], worker.name)
    return ms, worker.transactions - tx0


@dataclass
class Batches:
    one_by_one: list[float]
    together: list[float]
    one_by_one_tx: list[int]
    together_tx: list[int]


def measure_batches(
    worker: SwitchWorker, ports: Sequence[str], cfg: Callable[[str, int], PortConfig], rounds: int
) -> Batches:
    """Rounds of (one by one to state 0, together to state 1), after a warm-up to state 1."""
    batch_phase(worker, [cfg(p, 1) for p in ports], together=True)
    out = Batches([], [], [], [])
    for _ in range(rounds):
        ms, tx = batch_phase(worker, [cfg(p, 0) for p in ports], together=False)
        out.one_by_one.append(ms)
        out.one_by_one_tx.append(tx)
        ms, tx = batch_phase(worker, [cfg(p, 1) for p in ports], together=True)
        out.together.append(ms)
        out.together_tx.append(tx)
    return out


def time_connect(connect: Callable[[], object], close: Callable[[], None]) -> float:
    t0 = time.perf_counter_ns()
    connect()
    ms = (time.perf_counter_ns() - t0) / 1e6
    close()
    return ms


# -- netconfd -------------------------------------------------------------------------------------
class RawNetconf:
    """The floor: a change's 8 RPCs straight through an ncclient Manager over our session, with
    the XML made beforehand; the port alternates like the measured ones."""

    def __init__(self, params: SwitchParams, port: str) -> None:
        self.port = port
        self.session = NetconfSession(params)
        self.m = self.session.manager()
        self.filter = ("subtree", etree.tostring(read_filter([port]), encoding="unicode"))
        # From any other trunk set both are a replace of the port's whole switched-vlan config,
        # exactly what the driver sends for these changes.
        self.marks: dict[str, list[float]] = {}
        self.xml = [
            render_config([PortChange(PortConfig(port), PortConfig.trunk(port, v))]) for v in TRUNKS
        ]

    def change(self, i: int) -> float:
        m, clock, marks = self.m, time.perf_counter_ns, self.marks
        t0 = clock()
        m.get_config(source="running", filter=self.filter)  # plan: read
        t1 = clock()
        m.lock(target="candidate")
        t2 = clock()
        m.discard_changes()
        t3 = clock()
        m.edit_config(target="candidate", config=self.xml[i], default_operation="none")
        t4 = clock()
        token = secrets.token_hex(8)
        m.commit(confirmed=True, timeout="60", persist=token)
        t5 = clock()
        m.get_config(source="running", filter=self.filter)  # verify before confirming
        t6 = clock()
        m.commit(persist_id=token)
        t7 = clock()
        m.unlock(target="candidate")
        t8 = clock()
        ts = (t0, t1, t2, t3, t4, t5, t6, t7, t8)
        for step, a, b in zip(RPCS, ts, ts[1:], strict=False):
            marks.setdefault(step, []).append((b - a) / 1e6)
        return (t8 - t0) / 1e6

    def rpc_medians(self, skip: int) -> dict[str, float]:
        """Median milliseconds per RPC over the timed changes (the first `skip` were warm-up)."""
        return {step: round(median(ms[skip:]), 3) for step, ms in self.marks.items()}

    def check(self, i: int) -> None:
        data = self.session.get_config(read_filter([self.port]))
        got = parse_ports(data, [self.port]).get(self.port)
        if got != PortConfig.trunk(self.port, TRUNKS[i]):
            raise RuntimeError(f"netconfd floor: {self.port} reads back {got}")

    def close(self) -> None:
        self.session.close()


@dataclass
class NetconfChanges:
    ours: list[float]
    stock: list[float]
    floor: list[float]


def measure_netconf_changes(
    ours: SwitchWorker, stock: SwitchWorker, floor: RawNetconf, plan: Plan
) -> NetconfChanges:
    """Ours and the floor alternate every round; a stock change every few rounds (each is ~0.9 s)."""
    out = NetconfChanges([], [], [])
    every = max(plan.ours // max(plan.stock, 1), 1)
    n_stock = 0
    one_change(stock, PortConfig.trunk(NC_STOCK, TRUNKS[0]))  # warm-up
    for i in range(plan.warmup + plan.ours):
        k = i - plan.warmup  # timed from k = 0
        v = i % 2
        ms = one_change(ours, PortConfig.trunk(NC_OURS, TRUNKS[v]))
        floor_ms = floor.change(v)
        if k >= 0:
            out.ours.append(ms)
            out.floor.append(floor_ms)
        if k >= 0 and k % every == 0 and len(out.stock) < plan.stock:
            n_stock += 1
            out.stock.append(one_change(stock, PortConfig.trunk(NC_STOCK, TRUNKS[n_stock % 2])))
    while len(out.stock) < plan.stock:  # only when plan.stock > plan.ours
        n_stock += 1
        out.stock.append(one_change(stock, PortConfig.trunk(NC_STOCK, TRUNKS[n_stock % 2])))
    floor.check((plan.warmup + plan.ours - 1) % 2)
    return out


def run_netconf(plan: Plan) -> list[Metric]:
    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        server = stack.enter_context(ncs.NetconfServer("candidate", ports=NC_PORTS))
        server_start = time.monotonic() - t0

        def params(fast: bool) -> SwitchParams:
            return server.params(confirm_timeout=60, options={"fast_io": fast})

        connects: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(plan.connects):
            for fast in (True, False):
                session = NetconfSession(params(fast))
                connects[fast].append(time_connect(session.manager, session.close))

        workers = {}
        for fast in (True, False):
            driver = OpenConfigDriver(params(fast))
            driver.session.manager()  # the worker starts with its session open
            workers[fast] = SwitchWorker(prepared(driver), "ours" if fast else "stock")
            stack.callback(workers[fast].stop, WAIT)
        floor = RawNetconf(params(True), NC_FLOOR)
        stack.callback(floor.close)

        changes = measure_netconf_changes(workers[True], workers[False], floor, plan)
        batches = measure_batches(
            workers[True],
            NC_BATCH,
            lambda p, i: PortConfig.trunk(p, BATCH_TRUNKS[i]),
            plan.nc_rounds,
        )
    ours_med, stock_med, floor_med = (
        median(changes.ours),
        median(changes.stock),
        median(changes.floor),
    )
    what = "netconfd"
    return [
        latency(
            "torshim.netconf.change",
            f"TOR {what}: 1 port change end to end, our session",
            changes.ours,
            CHANGE_GOAL_MS,
            {"rpcs": len(RPCS), "port": NC_OURS, "fast_io": True, "datastore": "candidate"},
        ),
        latency(
            "torshim.netconf.change_stock",
            f"TOR {what}: 1 port change, stock ncclient I/O",
            changes.stock,
            None,
            {"rpcs": len(RPCS), "port": NC_STOCK, "fast_io": False},
        ),
        ratio(
            "torshim.netconf.change_stock_ratio",
            "TOR netconfd: stock ncclient / our session (1 change, medians)",
            stock_med,
            ours_med,
            runs=len(changes.stock),
        ),
        latency(
            "torshim.netconf.change_floor",
            "TOR netconfd: floor, the same 8 RPCs raw on our session",
            changes.floor,
            None,
            {"port": NC_FLOOR, "rpc_ms": floor.rpc_medians(plan.warmup)},
        ),
        ratio(
            "torshim.netconf.change_floor_ratio",
            "TOR netconfd: 1 change / its 8 raw RPCs (medians)",
            ours_med,
            floor_med,
            runs=len(changes.ours),
        ),
        latency(
            "torshim.netconf.connect",
            "TOR netconfd: session set-up (SSH, hello, probe), our session",
            connects[True],
            None,
            {"server_start_ms": round(server_start * 1000, 1)},
        ),
        latency(
            "torshim.netconf.connect_stock",
            "TOR netconfd: session set-up, stock ncclient I/O",
            connects[False],
            None,
        ),
        *batch_metrics("torshim.netconf", "TOR netconfd", batches),
    ]


# -- the Linux switch -----------------------------------------------------------------------------
@contextlib.contextmanager
def namespaces() -> Iterator[Callable[[], str]]:
    """A factory of uniquely named network namespaces, all deleted on the way out."""
    made: list[str] = []

    def make() -> str:
        name = f"tsbench-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def run_linux(plan: Plan) -> list[Metric]:
    with contextlib.ExitStack() as stack:
        make_ns = stack.enter_context(namespaces())
        t0 = time.monotonic()
        sw = stack.enter_context(lsw.linux_switch(make_ns, ports=LX_PORTS, name="tor1"))
        setup = time.monotonic() - t0
        params = sw.params()

        connects = []
        for _ in range(plan.connects):
            drv = LinuxSwitch(params)
            connects.append(time_connect(drv.session.connection, drv.close))

        driver = LinuxSwitch(params)
        driver.session.connection()
        worker = SwitchWorker(prepared(driver), "linux")
        stack.callback(worker.stop, WAIT)
        line = LinuxSwitch(params)  # the floor's own session
        stack.callback(line.close)
        true_line = [with_rc("true")]
        line.session.config(true_line, enter=False, exit=False)

        change: list[float] = []
        floor: list[float] = []
        for i in range(plan.warmup + plan.linux):
            ms = one_change(worker, PortConfig.access(LX_ONE, ACCESS[i % 2]))
            t1 = time.perf_counter_ns()
            line.session.config(true_line, enter=False, exit=False)
            line_ms = (time.perf_counter_ns() - t1) / 1e6
            if i >= plan.warmup:
                change.append(ms)
                floor.append(line_ms)
        want = f"br-v{ACCESS[(plan.warmup + plan.linux - 1) % 2]}"
        if sw.master(LX_ONE) != want:  # the kernel's own view, not the driver's
            raise RuntimeError(f"linux switch: {LX_ONE} is in {sw.master(LX_ONE)}, not {want}")

        batches = measure_batches(
            worker, LX_BATCH, lambda p, i: PortConfig.access(p, BATCH_ACCESS[i]), plan.lx_rounds
        )
        members = sw.bridge_members().get(f"br-v{BATCH_ACCESS[1]}", set())
        if not set(LX_BATCH) <= members:
            raise RuntimeError("linux switch: the 50 ports are not all in their bridge")
        # Lines a transaction sends (pure render): what the 50-together figure is made of.
        one_lines = len(driver.render([_access_change(LX_ONE, 0, 1)]).lines)
        batch_lines = len(driver.render([_access_change(p, 0, 1) for p in LX_BATCH]).lines)

    what = "Linux switch (SSH)"
    return [
        latency(
            "torshim.linux.change",
            f"TOR {what}: 1 port change end to end",
            change,
            None,
            {"config_lines": one_lines, "port": LX_ONE},
        ),
        latency(
            "torshim.linux.line_floor",
            "TOR Linux switch: floor, one config line round trip",
            floor,
            None,
        ),
        ratio(
            "torshim.linux.change_line_ratio",
            "TOR Linux switch: 1 change / one line round trip (medians)",
            median(change),
            median(floor),
            runs=len(change),
        ),
        latency(
            "torshim.linux.connect",
            "TOR Linux switch: session set-up (SSH, login shell)",
            connects,
            None,
            {"switch_setup_ms": round(setup * 1000, 1)},
        ),
        *batch_metrics(
            "torshim.linux", "TOR Linux switch", batches, {"config_lines_together": batch_lines}
        ),
    ]


def _access_change(port: str, a: int, b: int) -> PortChange:
    return PortChange(
        PortConfig.access(port, BATCH_ACCESS[a]), PortConfig.access(port, BATCH_ACCESS[b])
    )


# -- figures --------------------------------------------------------------------------------------
def latency(
    name: str,
    label: str,
    samples: list[float],
    goal_ms: float | None,
    extra: dict[str, Any] | None = None,
) -> Metric:
    med = median(samples)
    return Metric(
        name=name,
        label=label,
        unit="ms",
        median=med,
        p90=p90(samples),
        p99=p99(samples),
        goal="" if goal_ms is None else f"≤ {goal_ms:g} ms",
        met=None if goal_ms is None else med <= goal_ms,
        runs=len(samples),
        extra=extra or {},
    )


def ratio(
    name: str, label: str, num: float, den: float, runs: int, goal: float | None = None
) -> Metric:
    value = num / den
    return Metric(
        name=name,
        label=label,
        unit="x",
        median=value,
        p90=None,
        goal="" if goal is None else f"≥ {goal:g}×",
        met=None if goal is None else value >= goal,
        runs=runs,
    )


def batch_metrics(
    prefix: str, what: str, b: Batches, extra: dict[str, Any] | None = None
) -> list[Metric]:
    obo_tx, tog_tx = (_n(median(b.one_by_one_tx)), _n(median(b.together_tx)))
    speedup = ratio(
        f"{prefix}.batch{BATCH}_speedup",
        f"{what}: {BATCH} changes, one by one / together (medians)",
        median(b.one_by_one),
        median(b.together),
        runs=len(b.together),
        goal=SPEEDUP_GOAL,
    )
    speedup.extra = {
        "per_round": [round(o / t, 2) for o, t in zip(b.one_by_one, b.together, strict=True)],
        **(extra or {}),
    }
    return [
        Metric(
            name=f"{prefix}.batch{BATCH}_one_by_one",
            label=f"{what}: {BATCH} changes one by one, total ({obo_tx})",
            unit="ms",
            median=median(b.one_by_one),
            p90=p90(b.one_by_one),
            runs=len(b.one_by_one),
            extra={
                "transactions": b.one_by_one_tx,
                "per_change_ms": round(median(b.one_by_one) / BATCH, 3),
            },
        ),
        Metric(
            name=f"{prefix}.batch{BATCH}_together",
            label=f"{what}: {BATCH} changes submitted together, total ({tog_tx})",
            unit="ms",
            median=median(b.together),
            p90=p90(b.together),
            runs=len(b.together),
            extra={"transactions": b.together_tx},
        ),
        speedup,
    ]


def _n(count: float) -> str:
    n = round(count)
    return f"{n} transaction" + ("" if n == 1 else "s")


def run(quick: bool = False) -> list[Metric]:
    plan = QUICK if quick else FULL
    metrics: list[Metric] = []
    reason = netconfd_missing()
    if reason:
        metrics.append(skipped("torshim.netconf", "TOR netconfd", reason))
    else:
        metrics.extend(run_netconf(plan))
    reason = linux_missing()
    if reason:
        metrics.append(skipped("torshim.linux", "TOR Linux switch", reason))
    else:
        metrics.extend(run_linux(plan))
    return metrics
