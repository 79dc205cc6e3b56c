"""The NETCONF session shared by the NETCONF drivers (openconfig, junos): connect, detect what the
server offers, run one safe transaction, translate ncclient's errors into torshim.errors.

Why a helper of our own rather than `ncclient.manager.connect`:

- Host keys are checked by default against `SwitchParams.known_hosts` *only* (ncclient would read
  ~/.ssh/known_hosts as well); `host_key_checking=False` is the only way to turn that off.
- Latency. ncclient queues every outgoing RPC for its I/O thread, which only looks at the queue
  between `select(timeout=TICK)` calls (TICK = 0.1 s): ~100 ms per RPC on loopback. Lowering the
  module-global TICK fixes it but for every ncclient user in the process and makes each idle
  session wake 1000 times a second (TESTBED: ~1.8 % of a core). Instead our sessions are an
  `SSHSession` subclass whose `send()` frames and writes the message itself, under a lock, in the
  caller's thread (paramiko channels allow one writer and one reader thread). The I/O thread then
  only reads; a reply wakes its `select` at once. Nothing global changes, idle cost stays at the
  stock 10 wake-ups a second. `SwitchParams.options["fast_io"] = False` restores ncclient's path
  (used to measure the difference).
- The transaction (see `NetconfSession.edit`): with `:candidate` lock candidate (and running too
  with option `lock_running`, for servers that want it), discard-changes, edit-config, commit
  confirmed with a persist token (`:confirmed-commit:1.1`), read back through the caller's
  `verify`, confirm with the persist-id, unlock; any failure discards / cancels the commit and
  unlocks before raising. If the session dies between the confirmed commit and the confirm, the
  server rolls back after `confirm_timeout`, and our next transaction cancels that pending commit
  first. Running is unlocked *before* a cancel-commit: netconfd answers `<ok/>` to a cancel-commit
  from a session holding the running lock and rolls nothing back (found here; confirm works).
  Without `:candidate`: edit-config to running (rollback-on-error when offered), verify, then
  copy-config running -> startup when `:startup` is offered (a failed verify is not saved, but
  cannot be undone either: VerifyError).
- `<validate>` is never sent: Debian's netconfd answers `<ok/>` to a commit that directly follows a
  validate and drops the change (TESTBED trap 2); we read back instead.
- Sessions stay open and are replaced when found dead (never inside a transaction: a new session
  would hold none of its locks). A fresh session's first request is a harmless probe
  (`hello_probe`): netconfd sits on a request that arrives together with the client's <hello>.
- Known ncclient/paramiko limits kept: a session is used by one thread at a time (one worker per
  switch); `connect_fn` can be replaced for tests.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko
from lxml import etree
from ncclient import manager as nc_manager
from ncclient.operations import RaiseMode
from ncclient.operations.errors import MissingCapabilityError, TimeoutExpiredError
from ncclient.operations.rpc import RPCError
from ncclient.transport import SSHSession
from ncclient.transport.errors import SessionCloseError, TransportError
from ncclient.transport.session import MSG_DELIM, NetconfBase

from torshim.errors import (
    CommandRejected,
    CommitError,
    ConnectError,
    LockDenied,
    ShimError,
    TransientError,
    UnsupportedError,
    VerifyError,
)

if TYPE_CHECKING:  # torshim.drivers imports every driver, and the NETCONF ones import us
    from torshim.drivers.base import SwitchDriver, SwitchParams
    from torshim.model import Changeset

log = logging.getLogger(__name__)

CAP = "urn:ietf:params:netconf:capability:"
TRANSIENT_TAGS = frozenset({"lock-denied", "in-use"})
Verify = Callable[[], None]


@dataclass(frozen=True)
class ServerCaps:
    """What the server offers that changes how we write to it."""

    candidate: bool = False
    confirmed_commit: bool = False  # :confirmed-commit:1.0 (confirm in the same session)
    persist: bool = False  # :confirmed-commit:1.1 (persist / persist-id, survives the session)
    writable_running: bool = False
    startup: bool = False
    rollback_on_error: bool = False

    @classmethod
    def from_uris(cls, uris: Iterable[str]) -> ServerCaps:
        have = {u.split("?", 1)[0] for u in uris}
        return cls(
            candidate=CAP + "candidate:1.0" in have,
            confirmed_commit=bool(
                {CAP + "confirmed-commit:1.0", CAP + "confirmed-commit:1.1"} & have
            ),
            persist=CAP + "confirmed-commit:1.1" in have,
            writable_running=CAP + "writable-running:1.0" in have,
            startup=CAP + "startup:1.0" in have,
            rollback_on_error=CAP + "rollback-on-error:1.0" in have,
        )


class FastSSHSession(SSHSession):
    """ncclient's SSH session with (a) a known_hosts file of our choice instead of ~/.ssh's and
    (b) a direct write in `send()`, so an RPC leaves at once instead of at the I/O thread's next
    TICK (see the module docstring)."""

    def __init__(self, device_handler: Any, known_hosts: str | None, fast_io: bool = True) -> None:
        super().__init__(device_handler)
        self._known_hosts_file = known_hosts
        self._fast_io = fast_io
        self._send_lock = threading.Lock()

    def load_known_hosts(self, filename: str | None = None) -> None:
        super().load_known_hosts(filename or self._known_hosts_file)

    def send(self, message: str) -> None:
        if not self._fast_io:
            return super().send(message)
        if not self.connected:
            raise TransportError("Not connected to NETCONF server")
        data = message.encode()
        if self._base == NetconfBase.BASE_11:
            data = b"\n#%d\n%s\n##\n" % (len(data), data)
        else:
            data += MSG_DELIM
        with self._send_lock:
            try:
                while data:
                    n = self._transport_write(data)
                    if n <= 0:
                        raise SessionCloseError("", data)
                    data = data[n:]
            except OSError as e:  # paramiko: "Socket is closed"
                raise TransportError(f"write failed: {e}") from e
        return None


def connect(params: SwitchParams, device_params: dict[str, Any] | None = None) -> Any:
    """An ncclient Manager over a FastSSHSession (the same steps as ncclient.manager.connect_ssh).

    Raises ConnectError for anything on the way: refused, timeout, host key, authentication."""
    handler = nc_manager.make_device_handler(device_params or {})
    kwargs: dict[str, Any] = dict(
        host=params.host,
        port=params.port,
        username=params.username,
        password=params.password,
        key_filename=params.key_file,
        timeout=params.connect_timeout,
        hostkey_verify=params.host_key_checking,
        # With neither password nor key configured, fall back to the agent and ~/.ssh/id_*.
        allow_agent=params.password is None and params.key_file is None,
        look_for_keys=params.password is None and params.key_file is None,
    )
    if params.options.get("keepalive"):
        kwargs["keepalive"] = int(params.options["keepalive"])
    handler.add_additional_ssh_connect_params(kwargs)
    # After the handler: ncclient's iosxe/iosxr handlers would accept any unknown host key.
    kwargs["unknown_host_cb"] = lambda host, fingerprint: False
    if hasattr(handler, "add_additional_netconf_params"):
        handler.add_additional_netconf_params({})
    session = FastSSHSession(
        handler, params.known_hosts, fast_io=bool(params.options.get("fast_io", True))
    )
    try:
        session.connect(**kwargs)
        # Warnings (Junos sends many) are not failures; errors are.
        m = nc_manager.Manager(
            session, handler, timeout=params.command_timeout, raise_mode=RaiseMode.ERRORS
        )
        if params.options.get("hello_probe", True):
            hello_probe(m, params)
    except Exception as e:
        with suppress(Exception):
            if session.transport:
                session.close()
        raise ConnectError(
            f"{params.name}: cannot open NETCONF session to {where(params)}: {e}"
        ) from e
    return m


PROBE_FILTER = ("subtree", '<torshim-probe xmlns="urn:x-torshim:probe"/>')


def hello_probe(m: Any, params: SwitchParams) -> None:
    """Send a get-config that selects nothing before the first real RPC of a session.

    netconfd parses whatever arrives in the same read as the client's <hello> with the framing
    from before the hello, and a request that came that early waits until more input arrives
    (seen: 3 in 60 fresh sessions whose first <lock> got no answer; more often without our TICK
    delay). So the first request is this harmless probe, with a short timeout; if it gets no
    answer, a second probe is the more input that releases both. Any reply, even an rpc-error,
    proves the session works."""
    for timeout in (min(0.5, params.command_timeout), params.command_timeout):
        m.timeout = timeout
        try:
            m.get_config(source="running", filter=PROBE_FILTER)
            break
        except RPCError:
            break
        except TimeoutExpiredError:
            if timeout == params.command_timeout:
                raise
            log.info("%s: no answer to the first request yet, nudging", params.name)
        finally:
            m.timeout = params.command_timeout


def where(params: SwitchParams) -> str:
    return f"{params.username}@{params.host}:{params.port}"


def rpc_errors(exc: RPCError) -> list[RPCError]:
    """ncclient folds several rpc-errors into one RPCError with `.errors`."""
    return list(getattr(exc, "errors", None) or [exc])


def describe(exc: RPCError) -> str:
    parts = []
    for e in rpc_errors(exc):
        text = (e.message or "").strip() or "(no message)"
        parts.append(f"{e.tag or 'error'}: {text}" + (f" at {e.path.strip()}" if e.path else ""))
    return "; ".join(parts)


def classify(exc: BaseException, stage: str, params: SwitchParams) -> ShimError:
    """Translate an ncclient/paramiko error raised during `stage` (lock, edit-config, commit, ...)."""
    prefix = f"{params.name}: {stage}"
    if isinstance(exc, ShimError):
        return exc
    if isinstance(exc, RPCError):
        tags = {e.tag for e in rpc_errors(exc)}
        if tags & TRANSIENT_TAGS:
            return LockDenied(f"{prefix}: {describe(exc)}")
        if "resource-denied" in tags:
            return TransientError(f"{prefix}: {describe(exc)}")
        if stage.startswith(("commit", "confirm", "copy-config")):
            return CommitError(f"{prefix} failed: {describe(exc)}")
        return CommandRejected(f"{prefix} rejected: {describe(exc)}")
    if isinstance(exc, MissingCapabilityError):
        return UnsupportedError(f"{prefix}: {exc}")
    if isinstance(exc, TimeoutExpiredError):
        return ConnectError(f"{prefix}: no reply within {params.command_timeout:g} s")
    if isinstance(exc, TransportError | paramiko.SSHException | OSError | EOFError):
        return ConnectError(
            f"{prefix}: session to {where(params)} lost: {exc or type(exc).__name__}"
        )
    return CommandRejected(f"{prefix}: {type(exc).__name__}: {exc}")


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(
        exc, TransportError | TimeoutExpiredError | paramiko.SSHException | OSError | EOFError
    )


class NetconfSession:
    """One long-lived NETCONF session to one switch, reconnected when it died.

    Not for concurrent use by several threads (one worker per switch); a lock makes misuse safe,
    not fast. `connect_fn` is injectable so the transaction logic can be tested without a server.
    """

    def __init__(
        self,
        params: SwitchParams,
        device_params: dict[str, Any] | None = None,
        connect_fn: Callable[[SwitchParams, dict[str, Any] | None], Any] = connect,
    ) -> None:
        self.params = params
        self.device_params = device_params
        self._connect_fn = connect_fn
        self._m: Any = None
        self._caps: ServerCaps | None = None
        self._pending_persist: str | None = None  # a confirmed commit we could not confirm
        self._held: list[str] = []  # datastores this session has locked
        self._bound: Any = None  # the Manager a transaction runs on: no silent reconnect inside
        self._lock = threading.RLock()

    # -- session --------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Connected as far as ncclient's reader thread and paramiko's transport know."""
        if self._m is None or not self._m.connected:
            return False
        transport = getattr(self._m._session, "transport", None)
        return transport is None or bool(transport.is_active())

    def manager(self) -> Any:
        """The live ncclient Manager; reconnects if the previous session died."""
        with self._lock:
            if not self.alive:
                self._drop()
                self._m = self._connect_fn(self.params, self.device_params)
                self._caps = ServerCaps.from_uris(self._m.server_capabilities)
                log.debug("%s: connected, %s", self.params.name, self._caps)
            return self._m

    @property
    def caps(self) -> ServerCaps:
        self.manager()
        assert self._caps is not None
        return self._caps

    def close(self) -> None:
        with self._lock:
            if self._m is not None and self._m.connected:
                with suppress(Exception):
                    self._m.close_session()
            self._drop()

    def _drop(self) -> None:
        """Forget the session (closing its transport); the next call reconnects."""
        m, self._m, self._caps = self._m, None, None
        if m is not None:
            with suppress(Exception):
                m._session.close()

    def call(self, stage: str, op: str, *args: Any, retry: bool = False, **kwargs: Any) -> Any:
        """`manager.<op>(...)` with errors translated; a lost session is dropped so the next call
        reconnects. `retry`: for requests that change nothing (get-config, lock), one more try on a
        fresh session when the old one turns out to be dead."""
        for attempt in (1, 2):
            if self._bound is not None and (self._m is not self._bound or not self.alive):
                # Inside a transaction a new session would hold none of its locks.
                self._drop()
                raise ConnectError(
                    f"{self.params.name}: {stage}: session to {where(self.params)} lost "
                    "during the transaction"
                )
            m = self.manager()
            try:
                return getattr(m, op)(*args, **kwargs)
            except Exception as e:
                if not _is_connection_error(e):
                    raise classify(e, stage, self.params) from e
                self._drop()
                if not retry or attempt == 2:
                    raise classify(e, stage, self.params) from e
                log.info("%s: %s: session lost, reconnecting", self.params.name, stage)
        raise AssertionError("unreachable")

    def get_config(self, subtree: str | etree._Element, source: str = "running") -> etree._Element:
        """The `<data>` element of a get-config with a subtree filter (namespace-free for device
        handlers that strip namespaces, like junos)."""
        if not isinstance(subtree, str):  # ncclient would move the element into its request
            subtree = etree.tostring(subtree, encoding="unicode")
        with self._lock:
            reply = self.call(
                "get-config", "get_config", source=source, filter=("subtree", subtree), retry=True
            )
        data = getattr(reply, "data_ele", None)
        if data is not None:
            return data
        doc = etree.fromstring(reply.tostring)  # an NCElement (junos): namespaces already removed
        found = doc.xpath("//*[local-name()='data']")
        return found[0] if found else doc

    # -- the transaction ------------------------------------------------------------------------
    def edit(
        self, config: str, verify: Verify | None = None, default_operation: str | None = None
    ) -> None:
        """Apply one `<config>` document atomically and safely (see the module docstring).

        `verify` reads back and raises (VerifyError) when the switch does not show what was asked;
        with a confirmed commit that failure rolls the change back before we return."""
        with self._lock:
            caps = self.caps
            if caps.candidate:
                self._edit_candidate(config, verify, default_operation)
            elif caps.writable_running:
                self._edit_running(config, verify, default_operation)
            else:
                raise UnsupportedError(
                    f"{self.params.name}: server offers neither :candidate nor :writable-running"
                )

    def _edit_candidate(self, config: str, verify: Verify | None, default_op: str | None) -> None:
        caps = self.caps
        self._cancel_stale_commit()
        lock_running = bool(self.params.options.get("lock_running", False))
        with self.locked(*(["running", "candidate"] if lock_running else ["candidate"])):
            try:
                self.call("discard-changes", "discard_changes")
                self.call(
                    "edit-config",
                    "edit_config",
                    target="candidate",
                    config=config,
                    default_operation=default_op,
                )
            except ShimError:
                self._discard()
                raise
            if not caps.confirmed_commit or self.params.options.get("confirmed_commit") is False:
                self._commit_plain()
                if verify:
                    verify()  # nothing left to roll back with: report it
                return
            token = secrets.token_hex(8) if caps.persist else None
            # Remembered before sending: if the reply is lost, the commit may be pending anyway.
            self._pending_persist = token
            try:
                self.call(
                    "commit confirmed",
                    "commit",
                    confirmed=True,
                    timeout=str(int(self.params.confirm_timeout)),
                    persist=token,
                )
            except ConnectError:
                raise
            except ShimError:
                self._pending_persist = None  # refused: nothing pending
                self._discard()
                raise
            try:
                if verify:
                    verify()
                self.call("confirm commit", "commit", persist_id=token)
            except BaseException:
                self._cancel_commit(token)
                raise
            self._pending_persist = None

    def _edit_running(self, config: str, verify: Verify | None, default_op: str | None) -> None:
        caps = self.caps
        with self.locked("running"):
            self.call(
                "edit-config",
                "edit_config",
                target="running",
                config=config,
                default_operation=default_op,
                error_option="rollback-on-error" if caps.rollback_on_error else None,
            )
            if verify:
                verify()  # before saving: a wrong running config must not reach startup
            if caps.startup:
                self.call("copy-config running->startup", "copy_config", source="running",
                          target="startup")  # fmt: skip

    def _commit_plain(self) -> None:
        try:
            self.call("commit", "commit")
        except ShimError:
            self._discard()
            raise

    @contextmanager
    def locked(self, *targets: str) -> Iterator[None]:
        """Lock the datastores in order, unlock in reverse. A session found dead at the first lock
        is replaced once (nothing is staged yet); lock-denied / in-use raise LockDenied."""
        self._held = []
        try:
            for i, target in enumerate(targets):
                # Only the first lock may reconnect: a new session would not hold the others.
                self.call(f"lock {target}", "lock", target=target, retry=i == 0)
                self._held.append(target)
                self._bound = self._m
            yield
        finally:
            for target in reversed(list(self._held)):
                self._unlock(target)
            self._held, self._bound = [], None

    def _unlock(self, target: str) -> None:
        if target not in self._held:
            return
        self._held.remove(target)
        if not self.alive:
            return  # the server released the session's locks with it
        try:
            self.call(f"unlock {target}", "unlock", target=target)
        except ShimError as e:
            log.warning("%s: %s; dropping the session to release it", self.params.name, e)
            self._drop()

    def _discard(self) -> None:
        if self.alive:
            try:
                self.call("discard-changes", "discard_changes")
            except ShimError as e:
                log.warning("%s: %s", self.params.name, e)

    def _cancel_commit(self, token: str | None) -> None:
        """Roll back our confirmed commit now. If the session is gone the server does it at the
        confirm timeout (persist) or at once (no persist); the token is kept for the next session."""
        if not self.alive:
            return
        self._unlock("running")  # netconfd ignores a cancel-commit while we hold running
        try:
            self.call("cancel-commit", "cancel_commit", persist_id=token)
            self._pending_persist = None
        except ShimError as e:
            log.warning("%s: %s; the server rolls back at the confirm timeout", self.params.name, e)
        self._discard()

    def _cancel_stale_commit(self) -> None:
        """A previous session died after a confirmed commit: cancel it instead of waiting (its
        pending commit would answer in-use to our lock until the timeout)."""
        token, self._pending_persist = self._pending_persist, None
        if token is None:
            return
        try:
            self.call("cancel-commit (stale)", "cancel_commit", persist_id=token)
            log.info("%s: cancelled an unconfirmed commit of a lost session", self.params.name)
        except ShimError as e:
            log.info("%s: stale confirmed commit already gone: %s", self.params.name, e)


def verify_read_back(driver: SwitchDriver, changeset: Changeset) -> None:
    """The read-back check run between the confirmed commit and the confirm: VerifyError (and so
    a rollback) when a changed port does not read back as asked."""
    from torshim.drivers.base import same

    wanted = {ch.port: ch.after for ch in changeset.changes}
    got = driver.read(sorted(wanted))
    wrong = sorted(p for p, want in wanted.items() if not same(got.get(p), want))
    if wrong:
        raise VerifyError(
            f"{driver.params.name}: after commit, {', '.join(wrong)} read back differently; "
            "rolled back"
        )
