"""One worker thread per switch: queue, coalesce, retry, break the circuit.

Why a worker and not a call per request: a switch takes one configuration transaction at a time,
and a transaction costs a lock, a commit and a read-back whatever its size. So requests that
arrive while one transaction runs are merged (later requests for the same port win) and sent as
ONE `driver.converge()`; every merged request's future gets that transaction's result, or its error.

- The driver, and the session it keeps, is reused across transactions; after a ConnectError (or
  an unexpected exception, which leaves the session in an unknown state) it is closed and a new
  one is made by `driver_factory` for the next attempt.
- TransientError and ConnectError are retried with full-jitter exponential backoff (a small loop
  rather than tenacity: the deadline bookkeeping below is per request, not per call). A failed
  attempt leaves nothing half-applied (the driver's contract), so a retry starts clean.
- Deadlines are absolute `time.monotonic()` values, one per request. Before each attempt, and
  before each backoff sleep, requests that cannot see the next attempt are failed with
  DeadlineExceeded and dropped from the merge. An attempt in flight is never interrupted (the
  driver's own timeouts bound it); if it succeeds after a deadline passed, the success is
  delivered, because the change was made.
- A CircuitBreaker per switch opens after N consecutive failed transactions: requests then fail
  fast with CircuitOpen; after the cool-down one transaction is let through (half-open), and its
  outcome closes or re-opens the breaker. Errors that are the request's fault (validation,
  unsupported, rejected command) do not count against the switch.
- `flush_save()` runs when the queue goes idle (and at stop), so debounced saves happen once per
  burst.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from torshim.drivers.base import SwitchDriver
from torshim.errors import (
    CircuitOpen,
    CommandRejected,
    ConnectError,
    DeadlineExceeded,
    ShimError,
    TransientError,
    UnsupportedError,
    ValidationError,
    WorkerStopped,
)
from torshim.model import ApplyResult, PortConfig

log = logging.getLogger(__name__)

Clock = Callable[[], float]


RETRYABLE: tuple[type[Exception], ...] = (TransientError, ConnectError)
# The switch answered correctly by refusing: not a sign of an unhealthy switch.
REQUEST_FAULTS: tuple[type[Exception], ...] = (ValidationError, UnsupportedError, CommandRejected)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, one transaction is retried on RETRYABLE errors."""

    attempts: int = 5  # attempts per transaction, the first included
    base: float = 0.05  # seconds; the backoff ceiling doubles per attempt from here...
    cap: float = 2.0  # ...up to this
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError("RetryPolicy needs attempts >= 1 and non-negative delays")

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] after failed `attempt`."""
        return self.rng.uniform(0.0, min(self.cap, self.base * 2 ** (attempt - 1)))


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (cool-down) -> half-open -> closed or open.

    Thread-safe: `submit()` asks `rejects()` from callers' threads, the worker records outcomes."""

    def __init__(self, failures: int = 5, cooldown: float = 30.0, clock: Clock = time.monotonic):
        if failures < 1 or cooldown < 0:
            raise ValueError("CircuitBreaker needs failures >= 1 and cooldown >= 0")
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None  # set while open or half-open
        self._trial = False  # a half-open trial transaction is running

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._trial or self._clock() - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def rejects(self) -> bool:
        """True while open and cooling down (fail fast without queueing)."""
        with self._lock:
            return self._state() == "open"

    def allow(self) -> bool:
        """May a transaction run now? In half-open, only one (the trial) until it reports back."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial or self._failures >= self.threshold:
                self._opened_at, self._trial = self._clock(), False

    def release(self) -> None:
        """A transaction let through ended without a verdict on the switch (request's fault)."""
        with self._lock:
            self._trial = False


@dataclass
class _Request:
    desired: dict[str, PortConfig]
    deadline: float
    future: Future[ApplyResult]


@dataclass
class _Call:
    fn: Callable[[SwitchDriver], Any]
    future: Future[Any]


class SwitchWorker:
    """The one thread that talks to one switch. See the module docstring for the semantics."""

    def __init__(
        self,
        driver_factory: Callable[[], SwitchDriver],
        name: str,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()
        self._factory = driver_factory
        self._driver: SwitchDriver | None = None
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._calls: list[_Call] = []
        self._stopping = threading.Event()
        self.transactions = 0  # converge attempts made, for metrics and tests
        self.sessions = 0  # drivers (sessions) made: a rise means a reconnect, so reconcile
        self._thread = threading.Thread(target=self._run, name=f"torshim-{name}", daemon=True)
        self._thread.start()

    # -- callers' side ----------------------------------------------------------------------------
    def submit(self, desired: Mapping[str, PortConfig], deadline: float) -> Future[ApplyResult]:
        """Queue `desired` ({port: config}) to be converged before `deadline` (time.monotonic()).

        Never blocks; errors arrive through the future (ShimError subclasses). A mapping whose
        keys disagree with its configs' ports is a caller bug: ValueError, raised here."""
        for port, cfg in desired.items():
            if cfg.port != port:
                raise ValueError(f"desired[{port!r}] is for port {cfg.port!r}")
        fut: Future[ApplyResult] = Future()
        if self._stopping.is_set():
            fut.set_exception(WorkerStopped(f"{self.name}: worker stopped"))
        elif self.breaker.rejects():
            fut.set_exception(CircuitOpen(f"{self.name}: circuit open after repeated failures"))
        elif deadline <= time.monotonic():
            fut.set_exception(DeadlineExceeded(f"{self.name}: deadline already passed"))
        else:
            with self._cond:
                self._pending.append(_Request(dict(desired), deadline, fut))
                self._cond.notify()
        return fut

    def call(self, fn: Callable[[SwitchDriver], Any]) -> Future[Any]:
        """Run `fn(driver)` on the worker's thread and session, between transactions (a read for
        an audit, say). Its exception goes to the future; a ConnectError drops the session."""
        fut: Future[Any] = Future()
        if self._stopping.is_set():
            fut.set_exception(WorkerStopped(f"{self.name}: worker stopped"))
            return fut
        with self._cond:
            self._calls.append(_Call(fn, fut))
            self._cond.notify()
        return fut

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the transaction in flight (no new attempts after a failed one), fail the queued
        requests with WorkerStopped, flush a pending save and close the driver."""
        with self._cond:
            self._stopping.set()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        """True once stop() was called: new requests fail with WorkerStopped."""
        return self._stopping.is_set()

    def __enter__(self) -> SwitchWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._calls and not self._stopping.is_set():
                        self._cond.wait()
                    if self._stopping.is_set():
                        break
                    calls, self._calls = self._calls, []
                    batch, self._pending = self._pending, []
                for c in calls:
                    self._run_call(c)
                batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
                if batch:
                    try:
                        self._transaction(batch)
                    except Exception as e:  # a worker bug: no caller may wait forever
                        log.exception("%s: transaction crashed", self.name)
                        _fail([r for r in batch if not r.future.done()], e)
                with self._cond:
                    idle = not self._pending
                if idle and not self._stopping.is_set():
                    self._flush()
        finally:
            with self._cond:
                left, self._pending = self._pending, []
                left_calls, self._calls = self._calls, []
            for r in [*left, *left_calls]:
                if r.future.set_running_or_notify_cancel():
                    r.future.set_exception(WorkerStopped(f"{self.name}: worker stopped"))
            self._flush()
            self._drop_driver()

    def _transaction(self, batch: list[_Request]) -> None:
        """Converge the merged desired state of `batch`, retrying; resolve every future."""
        if not self.breaker.allow():
            _fail(batch, CircuitOpen(f"{self.name}: circuit open after repeated failures"))
            return
        attempt = 0
        last: BaseException | None = None  # the previous attempt's error, for the deadline's
        while True:
            attempt += 1
            now = time.monotonic()
            # A backoff sleep can overrun on a busy machine: the deadline may pass during it.
            batch = _expire(batch, now, f"{self.name}: deadline passed before the attempt", last)
            if not batch:
                self.breaker.release()
                return
            merged: dict[str, PortConfig] = {}
            for r in batch:
                merged.update(r.desired)  # later requests for the same port win
            try:
                self.transactions += 1
                result = self._get_driver().converge(merged)
            except RETRYABLE as e:
                last = e
                if isinstance(e, ConnectError):
                    self._drop_driver()
                if attempt >= self.retry.attempts:
                    self.breaker.failure()
                    _fail(batch, e)
                    return
                delay = self.retry.delay(attempt)
                log.info("%s: attempt %d failed (%s); retry in %.3fs", self.name, attempt, e, delay)
                batch = _expire(
                    batch,
                    time.monotonic() + delay,
                    f"{self.name}: deadline passed while retrying",
                    e,
                )
                if not batch:
                    self.breaker.failure()
                    return
                if self._stopping.wait(delay):
                    self.breaker.release()
                    _fail(batch, WorkerStopped(f"{self.name}: worker stopped while retrying"), e)
                    return
            except REQUEST_FAULTS as e:
                self.breaker.release()
                _fail(batch, e)
                return
            except Exception as e:  # a driver bug or VerifyError/CommitError: session state unknown
                self._drop_driver()
                self.breaker.failure()
                _fail(batch, e)
                return
            else:
                self.breaker.success()
                for r in batch:
                    r.future.set_result(result)
                return

    def _run_call(self, c: _Call) -> None:
        if not c.future.set_running_or_notify_cancel():
            return
        try:
            c.future.set_result(c.fn(self._get_driver()))
        except BaseException as e:
            if isinstance(e, ConnectError) or not isinstance(e, ShimError):
                self._drop_driver()  # the session's state is unknown
            c.future.set_exception(e)

    def _get_driver(self) -> SwitchDriver:
        if self._driver is None:
            self._driver = self._factory()
            self.sessions += 1
        return self._driver

    def _drop_driver(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            try:
                driver.close()
            except Exception:
                log.warning("%s: closing the driver failed", self.name, exc_info=True)

    def _flush(self) -> None:
        if self._driver is None:
            return
        try:
            self._driver.flush_save()
        except ConnectError:
            log.warning("%s: save on idle failed; session dropped", self.name, exc_info=True)
            self._drop_driver()
        except Exception:
            log.warning("%s: save on idle failed", self.name, exc_info=True)


def _expire(
    batch: list[_Request], when: float, why: str, cause: BaseException | None = None
) -> list[_Request]:
    """Fail the requests whose deadline is at or before `when`; return the others."""
    keep = []
    for r in batch:
        if r.deadline <= when:
            err = DeadlineExceeded(why + (f" (last error: {cause})" if cause else ""))
            err.__cause__ = cause
            r.future.set_exception(err)
        else:
            keep.append(r)
    return keep


def _fail(batch: list[_Request], err: BaseException, cause: BaseException | None = None) -> None:
    if cause is not None:
        err.__cause__ = cause
    for r in batch:
        r.future.set_exception(err)
