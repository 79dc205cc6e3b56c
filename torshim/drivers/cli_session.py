"""The netmiko session every CLI driver shares, and the CLI driver skeleton.

- One SSH session per driver object, opened on first use and reused (netmiko is not thread-safe:
  the per-switch worker owns the driver); checked alive before use and reopened when it died.
- Host keys are checked unless the config says otherwise: against `SwitchParams.known_hosts`, or
  the system's known_hosts; an unknown or changed key is a ConnectError, never a silent accept.
- Config lines go through `send_config_set(cmd_verify=True)` (each line waits for its echo and the
  prompt, not for netmiko's 2 s of silence) with the vendor's error patterns: a match stops the
  push at that line and becomes CommandRejected. Connection, login and host-key failures become
  ConnectError. With TCP_NODELAY on our socket, a line costs ~10 ms on the Linux test switch
  and one port change end to end (read, apply, read back) ~45 ms; connect ~0.25 s.
- "Save configuration" is debounced: a commit marks the switch dirty; the save runs when a later
  commit finds the mark older than `save_delay`, or when the worker calls `flush_save()` (idle,
  shutdown). A burst of 50 changes costs one `write memory`, not 50.

Vendor command text (device type, error patterns, the save command) lives in the vendor files.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import paramiko
from netmiko import ConnectHandler
from netmiko.base_connection import BaseConnection
from netmiko.exceptions import ConfigInvalidException, NetmikoBaseException

from torshim.drivers.base import SwitchDriver, SwitchParams
from torshim.errors import (
    CommandRejected,
    ConnectError,
    ShimError,
    UnsupportedError,
    ValidationError,
)
from torshim.model import Changeset, PortChange, diff

log = logging.getLogger("torshim.cli")

ConnectFn = Callable[..., BaseConnection]
_IO_ERRORS = (NetmikoBaseException, paramiko.SSHException, OSError, EOFError)


# Shell-based switches (linux, cumulus_linux) answer errors only as text: every command is sent
# as `<command>; echo rc=$?` and a non-zero rc is a vendor error like any other.
RC_ERROR = r"^rc=[1-9][0-9]*\s*$"
_RC_LINE = re.compile(r"^rc=([0-9]+)\s*$", re.M)


def with_rc(command: str) -> str:
    return f"{command}; echo rc=$?"


def split_rc(output: str) -> tuple[str, int]:
    """`<output>, rc=N` -> (output, N); rc -1 if the marker is missing (the shell died?)."""
    marks = list(_RC_LINE.finditer(output))
    if not marks:
        return output, -1
    last = marks[-1]
    return output[: last.start()].rstrip("\r\n"), int(last.group(1))


def _reason(exc: BaseException) -> str:
    """netmiko's messages are paragraphs; keep the root cause on one line."""
    root = exc.__cause__ or exc.__context__ or exc
    text = " ".join(str(root).split()) or type(root).__name__
    return f"{type(root).__name__}: {text[:300]}"


class CliSession:
    """One netmiko connection to one switch, with the vendor's error patterns and save command."""

    def __init__(
        self,
        params: SwitchParams,
        device_type: str,
        *,
        error_patterns: Sequence[str] = (),
        save_command: str | None = None,
        enable: bool = False,
        exit_command: str = "end",
        connect: ConnectFn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.params = params
        self.device_type = device_type
        self.error_pattern = "|".join(f"(?:{p})" for p in error_patterns) or None
        self._error_rx = re.compile(self.error_pattern, re.M) if self.error_pattern else None
        self.save_command = save_command
        self.enable = enable
        self.exit_command = exit_command
        self._connect = connect or open_netmiko
        self._clock = clock
        self._conn: BaseConnection | None = None
        self.save_delay = float(params.options.get("save_delay", 10.0))
        self._dirty_since: float | None = None
        self.connect_seconds: float | None = None  # last connect, for metrics and the report
        self.saves = 0

    # -- connection -----------------------------------------------------------------------------
    def connect_kwargs(self) -> dict[str, Any]:
        """ConnectHandler's arguments: pure, so the host-key policy is testable without a switch."""
        p = self.params
        kw: dict[str, Any] = {
            "device_type": self.device_type,
            "host": p.host,
            "port": p.port,
            "username": p.username,
            "allow_agent": False,
            "conn_timeout": p.connect_timeout,
            "auth_timeout": p.connect_timeout,
            "banner_timeout": p.connect_timeout,
            "fast_cli": True,
        }
        if p.password is not None:
            kw["password"] = p.password
        if p.key_file:
            kw["use_keys"] = True
            kw["key_file"] = p.key_file
        secret = p.options.get("secret")
        if secret is not None:
            kw["secret"] = str(secret)
        if p.host_key_checking:
            kw["ssh_strict"] = True
            if p.known_hosts:
                kw.update(alt_host_keys=True, alt_key_file=p.known_hosts, system_host_keys=False)
            else:
                kw["system_host_keys"] = True
        else:
            kw["ssh_strict"] = False
        return kw

    def connection(self) -> BaseConnection:
        """The live connection, reopened if it died since last use."""
        if self._conn is not None and self.alive():
            return self._conn
        self._drop()
        p = self.params
        if p.host_key_checking and p.known_hosts and not os.path.isfile(p.known_hosts):
            raise ConnectError(f"{p.name}: known_hosts file {p.known_hosts} does not exist")
        start = time.monotonic()
        try:
            conn = self._connect(**self.connect_kwargs())
        except _IO_ERRORS as e:
            raise ConnectError(
                f"{p.name}: cannot connect to {p.host}:{p.port}: {_reason(e)}"
            ) from e
        try:
            if self.enable and not conn.check_enable_mode():
                conn.enable()
        except (*_IO_ERRORS, ValueError) as e:
            _quiet_disconnect(conn)
            raise ConnectError(f"{p.name}: cannot enter enable mode: {_reason(e)}") from e
        _nodelay(conn)
        self.connect_seconds = time.monotonic() - start
        log.debug("%s: connected in %.3f s", p.name, self.connect_seconds)
        self._conn = conn
        return conn

    def alive(self) -> bool:
        """The transport is up; an SSH ignore message (never seen by the CLI) probes the socket.
        netmiko's own is_alive() types a NUL byte into the shell, which a Linux shell keeps."""
        conn = self._conn
        chan = getattr(conn, "remote_conn", None)
        if conn is None or chan is None or getattr(chan, "closed", True):
            return False
        transport = getattr(chan, "transport", None)
        try:
            if transport is None or not transport.is_active():
                return False
            transport.send_ignore()
        except (*_IO_ERRORS, AttributeError):
            return False
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _quiet_disconnect(conn)

    # -- commands -------------------------------------------------------------------------------
    def rejected(self, output: str) -> str | None:
        """The first line of `output` matching a vendor error pattern, if any."""
        if self._error_rx is None:
            return None
        m = self._error_rx.search(output)
        return m.group(0).strip() if m else None

    def command(
        self,
        cmd: str,
        *,
        expect: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> str:
        """One exec-mode command (show, commit, save); vendor errors -> CommandRejected.

        Written and read like send_config_set does (echo, then the prompt, polling every 10 ms):
        netmiko's send_command polls every 25 ms and, without an expect string, first runs
        find_prompt(), which together cost ~50 ms per command on a Linux switch."""
        conn = self.connection()
        if expect is None:
            expect = rf"^{re.escape(conn.base_prompt)}[^\r\n]*[>#$%]\s*$"
        read_timeout = timeout or self.params.command_timeout
        try:
            conn.write_channel(conn.normalize_cmd(cmd))
            conn.read_until_pattern(pattern=re.escape(cmd.strip()), read_timeout=read_timeout)
            out = conn.read_until_pattern(pattern=expect, read_timeout=read_timeout, re_flags=re.M)
        except _IO_ERRORS as e:
            self._drop()  # the session's state is unknown now: never reuse it
            raise ConnectError(f"{self.params.name}: {cmd!r} failed: {_reason(e)}") from e
        lines = out.splitlines()
        out = "\n".join(lines[1:-1])  # the rest of the echo line, and the prompt, go
        if check and (bad := self.rejected(out)):
            raise CommandRejected(f"{self.params.name}: {cmd!r} rejected: {bad}")
        return out

    def config(
        self,
        lines: Sequence[str],
        *,
        enter: bool = True,
        exit: bool = True,
        config_command: str | None = None,
    ) -> str:
        """Send config lines, verifying each echo; stop at the first vendor error."""
        conn = self.connection()
        kwargs: dict[str, Any] = {}
        if config_command:
            kwargs["config_mode_command"] = config_command
        try:
            out = conn.send_config_set(
                list(lines),
                cmd_verify=True,
                error_pattern=self.error_pattern or "",
                enter_config_mode=enter,
                exit_config_mode=False,  # ours below: some CLIs need `exit` more than once
                read_timeout=self.params.command_timeout,
                **kwargs,
            )
        except ConfigInvalidException as e:
            if exit:
                with contextlib.suppress(
                    ConnectError
                ):  # the rejection is the news; session dropped
                    self._leave_config(conn)
            raise CommandRejected(f"{self.params.name}: {' '.join(str(e).split())}") from e
        except (*_IO_ERRORS, ValueError) as e:
            self._drop()
            raise ConnectError(f"{self.params.name}: config push failed: {_reason(e)}") from e
        if exit:
            self._leave_config(conn)
        if bad := self.rejected(out):  # an error printed after the last line's prompt check
            raise CommandRejected(f"{self.params.name}: rejected: {bad}")
        return out

    def _leave_config(self, conn: BaseConnection) -> None:
        """Back to exec mode: `end` once on a real IOS; `exit` per level where `end` is missing."""
        try:
            for _ in range(4):
                if not conn.check_config_mode():
                    return
                with contextlib.suppress(ValueError):  # netmiko: "still in config mode"
                    conn.exit_config_mode(exit_config=self.exit_command)
        except _IO_ERRORS as e:
            self._drop()
            raise ConnectError(f"{self.params.name}: leaving config mode: {_reason(e)}") from e
        self._drop()  # stuck in config mode: a new session is cleaner than guessing
        raise ConnectError(f"{self.params.name}: cannot leave config mode")

    # -- debounced save -------------------------------------------------------------------------
    def committed(self) -> None:
        """A commit happened: mark dirty; save now only if the mark is older than save_delay."""
        if self.save_command is None:
            return
        now = self._clock()
        if self._dirty_since is None:
            self._dirty_since = now
        if now - self._dirty_since >= self.save_delay:
            self.save()

    @property
    def dirty(self) -> bool:
        return self._dirty_since is not None

    def flush_save(self) -> bool:
        """Save if anything was committed since the last save (the worker calls this when idle)."""
        if self._dirty_since is None:
            return False
        self.save()
        return True

    def save(self) -> None:
        if self.save_command is None:
            return
        self.command(self.save_command, timeout=max(self.params.command_timeout, 120.0))
        self._dirty_since = None
        self.saves += 1

    def close(self) -> None:
        """Save what is pending (best effort), then log out."""
        if self._conn is not None and self.dirty:
            try:
                self.flush_save()
            except ShimError as e:
                log.warning("%s: save at close failed: %s", self.params.name, e)
        self._drop()


def open_netmiko(**kwargs: Any) -> BaseConnection:
    """ConnectHandler on a socket of our own, so TCP_NODELAY holds from the first byte (session
    preparation included); see _nodelay for why."""
    sock = socket.create_connection((kwargs["host"], kwargs["port"]), kwargs["conn_timeout"])
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return ConnectHandler(**kwargs, sock=sock)
    except BaseException:
        sock.close()
        raise


def _nodelay(conn: BaseConnection) -> None:
    """TCP_NODELAY, as OpenSSH sets for interactive sessions: without it, the keepalive probe
    and the command that follows it meet Nagle plus the peer's delayed ACK (+40 ms a command)."""
    sock = getattr(getattr(getattr(conn, "remote_conn", None), "transport", None), "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quiet_disconnect(conn: BaseConnection) -> None:
    try:
        conn.disconnect()
    except Exception:  # logging out of a dead session may fail any way it likes
        log.debug("disconnect failed", exc_info=True)


class CliDriver(SwitchDriver):
    """What the CLI flavours share: the session, apply() with a fresh re-render, and putting the
    touched ports back when a switch without transactions rejects a line half-way."""

    transport = "cli"
    device_type: ClassVar[str]
    error_patterns: ClassVar[tuple[str, ...]] = ()
    save_command: ClassVar[str | None] = None
    enable: ClassVar[bool] = False
    exit_config: ClassVar[str] = "end"  # leaves config mode; options.exit_config overrides

    def __init__(self, params: SwitchParams, *, connect: ConnectFn | None = None) -> None:
        super().__init__(params)
        self._connect = connect
        self._session: CliSession | None = None

    @property
    def session(self) -> CliSession:
        if self._session is None:
            self._session = CliSession(
                self.params,
                self.device_type,
                error_patterns=self.error_patterns,
                save_command=self.save_command,
                enable=self.enable,
                exit_command=str(self.params.options.get("exit_config", self.exit_config)),
                connect=self._connect,
            )
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()

    def flush_save(self) -> bool:
        """Save the running config now if a commit is pending a save."""
        return self._session.flush_save() if self._session is not None else False

    def apply(self, changeset: Changeset) -> None:
        if changeset.driver != self.name:
            raise UnsupportedError(f"{self.name} cannot apply a {changeset.driver} changeset")
        if changeset.empty:
            return
        # The lines sent are always a fresh render of the changes: a changeset edited or forged
        # after render() never reaches the switch.
        fresh = self.render(changeset.changes)
        if fresh.lines != changeset.lines:
            raise ValidationError(f"{self.name}: changeset lines differ from a fresh render")
        try:
            self.send(fresh)
        except CommandRejected as e:
            note = self.restore(changeset.changes)
            raise type(e)(f"{e}{note}") from e
        self.session.committed()

    @abc.abstractmethod
    def send(self, changeset: Changeset) -> None:
        """Push and commit the lines; raise CommandRejected / CommitError / LockDenied."""

    def restore(self, changes: Sequence[PortChange]) -> str:
        """After a rejected line on a switch without transactions: read each touched port and
        send it back to its before-state. Returns a note for the error message."""
        failed: list[str] = []
        for ch in changes:
            try:
                current = self.read([ch.port])
                back = self.render(diff(current, {ch.port: ch.before}))
                if not back.empty:
                    self.send(back)
            except ShimError as e:
                failed.append(f"{ch.port} ({e})")
        if failed:
            return f"; not restored: {'; '.join(failed)}"
        return "; touched ports restored"
