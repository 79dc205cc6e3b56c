"""SwitchWorker: coalescing, retries, deadlines, the circuit breaker, driver re-creation, stop().

The worker's logic is tested with a fake driver that records converge() calls (a gate holds the
first transaction so that later requests deterministically queue behind it); one test runs the
real `linux` driver against the Linux switch fixture and checks the bridges themselves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future

import pytest

from tests.torshim.linux_switch import (  # noqa: F401 - linux_sw is a fixture
    LinuxSwitch,
    linux_switch_fixture,
    needs_linux_switch,
)
from torshim.drivers import linux
from torshim.drivers.base import SwitchDriver, SwitchParams
from torshim.errors import CommandRejected, ConnectError, LockDenied, TransientError
from torshim.model import ApplyResult, Changeset, PortChange, PortConfig
from torshim.worker import (
    CircuitBreaker,
    CircuitOpen,
    DeadlineExceeded,
    RetryPolicy,
    SwitchWorker,
    WorkerStopped,
)

A = PortConfig.access
WAIT = 10.0  # upper bound of every wait; no test relies on timing within it
FAST = RetryPolicy(attempts=5, base=0.001, cap=0.005)


def later(seconds: float = 60.0) -> float:
    return time.monotonic() + seconds


def wait_for(cond: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Recorder:
    """What the fake drivers did, and what they should do next."""

    def __init__(self) -> None:
        self.calls: list[dict[str, PortConfig]] = []
        self.errors: list[Exception] = []  # raised by the next converge() calls, in order
        self.always: Exception | None = None  # raised by every converge() once `errors` is empty
        self.by_call: dict[int, Exception] = {}  # raised by the Nth converge() call (1-based)
        self.made: list[FakeDriver] = []
        self.flushes = 0
        self.gate: threading.Event | None = None  # the first converge() waits for it
        self.started = threading.Event()


class FakeDriver(SwitchDriver):
    name = "fake"
    transport = "cli"

    def __init__(self, rec: Recorder) -> None:
        super().__init__(SwitchParams("tor1", "fake", "192.0.2.1"))
        self.rec = rec
        self.closed = False

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        return Changeset(self.name, tuple(changes), lines=("noop",))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        return {p: PortConfig(p) for p in ports}

    def apply(self, changeset: Changeset) -> None:
        pass

    def converge(self, desired: Mapping[str, PortConfig]) -> ApplyResult:
        assert not self.closed, "converge on a closed driver"
        self.rec.calls.append(dict(desired))
        first = len(self.rec.calls) == 1
        self.rec.started.set()
        if first and self.rec.gate is not None:
            assert self.rec.gate.wait(WAIT)
        if len(self.rec.calls) in self.rec.by_call:
            raise self.rec.by_call[len(self.rec.calls)]
        if self.rec.errors:
            raise self.rec.errors.pop(0)
        if self.rec.always is not None:
            raise self.rec.always
        changes = tuple(PortChange(PortConfig(p), c) for p, c in sorted(desired.items()))
        return ApplyResult("tor1", changes, committed=True, verified=True)

    def flush_save(self) -> bool:
        self.rec.flushes += 1
        return True

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def make_worker(
    rec: Recorder, retry: RetryPolicy = FAST, breaker: CircuitBreaker | None = None
) -> SwitchWorker:
    def factory() -> FakeDriver:
        d = FakeDriver(rec)
        rec.made.append(d)
        return d

    return SwitchWorker(factory, "tor1", retry, breaker or CircuitBreaker(failures=100))


@pytest.fixture
def worker(rec: Recorder) -> Iterator[SwitchWorker]:
    w = make_worker(rec)
    try:
        yield w
    finally:
        w.stop(WAIT)


def held(rec: Recorder, w: SwitchWorker, first: dict[str, PortConfig]) -> Future[ApplyResult]:
    """Submit `first` and return once its transaction is running and held at the gate."""
    rec.gate = threading.Event()
    fut = w.submit(first, later())
    assert rec.started.wait(WAIT)
    return fut


# -- coalescing -----------------------------------------------------------------------------------


def test_requests_queued_behind_a_transaction_are_coalesced(
    rec: Recorder, worker: SwitchWorker
) -> None:
    f1 = held(rec, worker, {"swp1": A("swp1", 100)})
    f2 = worker.submit({"swp2": A("swp2", 200), "swp1": A("swp1", 150)}, later())
    f3 = worker.submit({"swp1": A("swp1", 300)}, later())  # later request, same port: wins
    assert rec.gate is not None
    rec.gate.set()
    r1, r2, r3 = (f.result(WAIT) for f in (f1, f2, f3))
    assert rec.calls == [
        {"swp1": A("swp1", 100)},
        {"swp1": A("swp1", 300), "swp2": A("swp2", 200)},
    ]
    assert r2 is r3 and r1 is not r2
    assert [c.after for c in r2.changes] == [A("swp1", 300), A("swp2", 200)]
    assert len(rec.made) == 1 and not rec.made[0].closed  # one driver, reused
    wait_for(lambda: rec.flushes >= 1, "flush_save when the queue went idle")


def test_mismatched_port_key_is_a_caller_bug(worker: SwitchWorker) -> None:
    with pytest.raises(ValueError, match="swp2"):
        worker.submit({"swp1": A("swp2", 100)}, later())


def test_a_cancelled_request_is_left_out(rec: Recorder, worker: SwitchWorker) -> None:
    f1 = held(rec, worker, {"swp1": A("swp1", 100)})
    f2 = worker.submit({"swp2": A("swp2", 200)}, later())
    f3 = worker.submit({"swp3": A("swp3", 300)}, later())
    assert f2.cancel()
    assert rec.gate is not None
    rec.gate.set()
    f1.result(WAIT)
    f3.result(WAIT)
    assert rec.calls[1] == {"swp3": A("swp3", 300)}


# -- retries and deadlines ------------------------------------------------------------------------


def test_transient_errors_are_retried_then_succeed(rec: Recorder, worker: SwitchWorker) -> None:
    rec.errors = [LockDenied("locked"), TransientError("in use")]
    r = worker.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)
    assert r.committed and len(rec.calls) == 3
    assert len(rec.made) == 1  # a transient error keeps the session


def test_retries_are_bounded_by_attempts(rec: Recorder) -> None:
    rec.always = LockDenied("locked for good")
    retry = RetryPolicy(attempts=3, base=0.001, cap=0.001)
    with make_worker(rec, retry) as w, pytest.raises(LockDenied, match="for good"):
        w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)
    assert len(rec.calls) == 3


def test_deadline_ends_the_retries(rec: Recorder) -> None:
    rec.always = TransientError("in use")
    with make_worker(rec, RetryPolicy(attempts=10_000, base=0.01, cap=0.02)) as w:
        fut = w.submit({"swp1": A("swp1", 100)}, later(1.0))  # room for one attempt on a busy box
        with pytest.raises(DeadlineExceeded, match="in use") as exc:
            fut.result(WAIT)
        assert isinstance(exc.value.__cause__, TransientError)
        assert len(rec.calls) >= 1


def test_a_passed_deadline_fails_without_touching_the_switch(
    rec: Recorder, worker: SwitchWorker
) -> None:
    with pytest.raises(DeadlineExceeded):
        worker.submit({"swp1": A("swp1", 100)}, time.monotonic() - 1).result(WAIT)
    assert rec.calls == []


def test_a_request_expiring_in_the_queue_is_dropped_from_the_merge(
    rec: Recorder, worker: SwitchWorker
) -> None:
    f1 = held(rec, worker, {"swp1": A("swp1", 100)})
    short = later(0.05)
    f2 = worker.submit({"swp2": A("swp2", 200)}, short)
    f3 = worker.submit({"swp3": A("swp3", 300)}, later())
    wait_for(lambda: time.monotonic() > short, "the short deadline to pass")
    assert rec.gate is not None
    rec.gate.set()
    f1.result(WAIT)
    f3.result(WAIT)
    with pytest.raises(DeadlineExceeded):
        f2.result(WAIT)
    assert rec.calls[1] == {"swp3": A("swp3", 300)}


def test_connect_error_recreates_the_driver(rec: Recorder, worker: SwitchWorker) -> None:
    worker.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)
    rec.errors = [ConnectError("session dropped")]
    r = worker.submit({"swp1": A("swp1", 200)}, later()).result(WAIT)
    assert r.committed
    assert len(rec.made) == 2 and rec.made[0].closed and not rec.made[1].closed


def test_an_unexpected_error_fails_every_coalesced_request(
    rec: Recorder, worker: SwitchWorker
) -> None:
    rec.by_call[2] = RuntimeError("driver bug")  # the second transaction (f2 + f3) hits a bug
    f1 = held(rec, worker, {"swp1": A("swp1", 100)})
    f2 = worker.submit({"swp2": A("swp2", 200)}, later())
    f3 = worker.submit({"swp3": A("swp3", 300)}, later())
    assert rec.gate is not None
    rec.gate.set()
    f1.result(WAIT)
    for f in (f2, f3):
        with pytest.raises(RuntimeError, match="driver bug"):
            f.result(WAIT)
    assert f2.exception() is f3.exception()
    assert rec.made[0].closed  # session state unknown: discarded


# -- circuit breaker ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_fails_fast_half_opens_and_closes(rec: Recorder) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, cooldown=10.0, clock=clock)
    with make_worker(rec, RetryPolicy(attempts=1), breaker) as w:
        rec.always = ConnectError("unreachable")
        for _ in range(2):
            with pytest.raises(ConnectError):
                w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)
        assert breaker.state == "open"
        calls = len(rec.calls)
        with pytest.raises(CircuitOpen):
            w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)
        assert len(rec.calls) == calls  # failed fast, the switch was not touched

        clock.now += 11
        assert breaker.state == "half-open"
        with pytest.raises(ConnectError):  # the trial fails: open again for another cool-down
            w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)
        assert breaker.state == "open"

        clock.now += 11
        rec.always = None
        assert w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT).committed
        assert breaker.state == "closed"


def test_request_faults_do_not_open_the_breaker(rec: Recorder) -> None:
    breaker = CircuitBreaker(failures=1, cooldown=60.0)
    with make_worker(rec, RetryPolicy(attempts=1), breaker) as w:
        rec.errors = [CommandRejected("no such port")]
        with pytest.raises(CommandRejected):
            w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)
        assert breaker.state == "closed"
        assert w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT).committed


def test_breaker_half_open_lets_one_trial_through() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failures=1, cooldown=5.0, clock=clock)
    assert b.allow()
    b.failure()
    assert b.state == "open" and b.rejects() and not b.allow()
    clock.now += 5
    assert not b.rejects()
    assert b.allow() and not b.allow()  # the trial, and nobody else while it runs
    b.success()
    assert b.state == "closed" and b.allow()


# -- stop -----------------------------------------------------------------------------------------


def test_stop_finishes_the_running_transaction_and_fails_the_queue(rec: Recorder) -> None:
    w = make_worker(rec)
    f1 = held(rec, w, {"swp1": A("swp1", 100)})
    f2 = w.submit({"swp2": A("swp2", 200)}, later())
    stopper = threading.Thread(target=w.stop, args=(WAIT,))
    stopper.start()
    wait_for(lambda: w.stopping, "stop() to be called")
    assert rec.gate is not None
    rec.gate.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert f1.result(WAIT).committed
    with pytest.raises(WorkerStopped):
        f2.result(WAIT)
    assert rec.calls == [{"swp1": A("swp1", 100)}]
    assert rec.made[0].closed and rec.flushes >= 1
    with pytest.raises(WorkerStopped):
        w.submit({"swp1": A("swp1", 100)}, later()).result(WAIT)


def test_stop_interrupts_the_backoff(rec: Recorder) -> None:
    rec.always = TransientError("in use")
    w = make_worker(rec, RetryPolicy(attempts=5, base=600.0, cap=600.0))
    fut = w.submit({"swp1": A("swp1", 100)}, later(3600))
    assert rec.started.wait(WAIT)
    w.stop(WAIT)
    with pytest.raises(WorkerStopped) as exc:
        fut.result(0)
    assert isinstance(exc.value.__cause__, TransientError)
    assert rec.made[0].closed


# -- the real thing: the linux driver on a Linux switch in a netns --------------------------------


@needs_linux_switch
def test_linux_switch_changes_submitted_together_are_one_transaction(
    linux_sw: LinuxSwitch,
) -> None:
    calls: list[dict[str, PortConfig]] = []
    gate, started = threading.Event(), threading.Event()

    class Counting(linux.LinuxSwitch):
        def converge(self, desired: Mapping[str, PortConfig]) -> ApplyResult:
            calls.append(dict(desired))
            started.set()
            if len(calls) == 1:
                assert gate.wait(WAIT)
            return super().converge(desired)

    made: list[Counting] = []

    def factory() -> Counting:
        made.append(Counting(linux_sw.params()))
        return made[-1]

    w = SwitchWorker(factory, linux_sw.name, RetryPolicy(attempts=2), CircuitBreaker())
    try:
        f1 = w.submit({"swp1": A("swp1", 100)}, later())
        assert started.wait(WAIT)
        rest = [
            w.submit({"swp2": A("swp2", 200)}, later()),
            w.submit({"swp3": A("swp3", 100)}, later()),
            w.submit({"swp1": A("swp1", 300)}, later()),
        ]
        gate.set()
        assert f1.result(WAIT).committed
        results = [f.result(WAIT) for f in rest]
        assert all(r is results[0] and r.committed and r.verified for r in results)
        assert len(calls) == 2  # four requests, two transactions
        assert linux_sw.master("swp1") == "br-v300"
        members = linux_sw.bridge_members()
        assert members["br-v300"] == {"swp1"}
        assert members["br-v200"] == {"swp2"}
        assert members["br-v100"] == {"swp3"}
        assert len(made) == 1  # one driver (and session) for both transactions
    finally:
        w.stop(WAIT)
    assert len(made) == 1 and not made[0].session.alive()  # stop() logged out
