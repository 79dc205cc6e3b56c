"""The netmiko session (host keys, credentials, debounced save) and the transaction flows of
junos (commit confirmed, rollback), eos (config session, abort), cumulus (apply, detach) and ios
(restore) against a scripted session: the order of commands, not a real switch."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.torshim.cli_helpers import CASES, PORT, SW, make, no_connect, params
from torshim.drivers.cli_session import CliDriver, CliSession, with_rc
from torshim.errors import CommandRejected, CommitError, ConnectError, LockDenied
from torshim.model import Changeset, PortChange

# -- the session: host keys, credentials, debounced save -------------------------------------------


def test_host_key_checking_is_on_by_default() -> None:
    kw = CliSession(params("linux"), "linux").connect_kwargs()
    assert kw["ssh_strict"] is True and kw["system_host_keys"] is True
    assert "alt_key_file" not in kw and kw["allow_agent"] is False

    kw = CliSession(params("linux", known_hosts="/k", key_file="/id"), "linux").connect_kwargs()
    assert kw["ssh_strict"] is True and kw["alt_host_keys"] is True and kw["alt_key_file"] == "/k"
    assert kw["system_host_keys"] is False and kw["use_keys"] is True and kw["key_file"] == "/id"
    assert "password" not in kw

    off = params("cisco_ios", host_key_checking=False, password="pw", options={"secret": "en"})
    kw = CliSession(off, "cisco_ios").connect_kwargs()
    assert kw["ssh_strict"] is False and kw["password"] == "pw" and kw["secret"] == "en"
    assert "use_keys" not in kw and "alt_key_file" not in kw


def test_missing_known_hosts_file_is_a_connect_error(tmp_path: Path) -> None:
    s = CliSession(params("linux", known_hosts=str(tmp_path / "nope")), "linux", connect=no_connect)
    with pytest.raises(ConnectError, match="known_hosts"):
        s.connection()


def test_unreachable_switch_is_a_connect_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    d = make("linux", host="127.0.0.1", port=port, connect_timeout=2.0, host_key_checking=False)
    d._connect = None  # the real ConnectHandler
    with pytest.raises(ConnectError, match="cannot connect"):
        d.read(["swp1"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_save_is_debounced() -> None:
    clock = Clock()
    s = CliSession(
        params("cisco_ios", options={"save_delay": 10}), "cisco_ios", save_command="write memory"
    )
    s._clock = clock
    sent: list[float] = []
    s.save = lambda: (sent.append(clock.now), setattr(s, "_dirty_since", None))  # type: ignore[method-assign]
    for t in (0, 1, 2, 9.9):  # a burst: the first commit marks dirty, nothing is saved yet
        clock.now = 1000 + t
        s.committed()
    assert sent == [] and s.dirty
    clock.now = 1010.0  # the mark is 10 s old: this commit saves everything so far
    s.committed()
    assert sent == [1010.0] and not s.dirty
    clock.now = 1011.0
    s.committed()
    assert s.flush_save() is True and sent == [1010.0, 1011.0]  # the worker's idle flush
    assert s.flush_save() is False

    immediate = CliSession(params("cisco_ios", options={"save_delay": 0}), "x", save_command="wr")
    calls: list[int] = []
    immediate.save = lambda: calls.append(1)  # type: ignore[method-assign]
    immediate.committed()
    assert calls == [1]
    nothing = CliSession(params("linux"), "linux", save_command=None)
    nothing.committed()
    assert not nothing.dirty


# -- transaction flows against a scripted session ----------------------------------------------


class Scripted(CliSession):
    """A CliSession whose switch is a script: exact command -> output (or an exception)."""

    def __init__(self, driver: CliDriver, script: dict[str, str | Exception]) -> None:
        super().__init__(
            driver.params,
            driver.device_type,
            error_patterns=driver.error_patterns,
            connect=no_connect,
        )
        self.script = script
        self.log: list[str] = []

    def _answer(self, cmd: str) -> str:
        self.log.append(cmd)
        ans = self.script.get(cmd, "")
        if isinstance(ans, Exception):
            raise ans
        return ans

    def command(self, cmd: str, **kw: Any) -> str:
        out = self._answer(cmd)
        if kw.get("check", True) and (bad := self.rejected(out)):
            raise CommandRejected(bad)
        return out

    def config(self, lines: Sequence[str], **kw: Any) -> str:
        if kw.get("config_command"):
            self.log.append(kw["config_command"])
        for line in lines:
            if bad := self.rejected(self._answer(line)):
                raise CommandRejected(f"{line}: {bad}")
        return ""


def scripted(driver: str, script: dict[str, str | Exception], **kw: Any) -> tuple[Any, Scripted]:
    d = make(driver, **kw)
    s = Scripted(d, script)
    d._session = s
    return d, s


def access_move(driver: str) -> Changeset:
    return make(driver).render([PortChange(*CASES["access_move"](PORT[driver]))])


def test_junos_commit_confirmed_then_confirm() -> None:
    d, s = scripted(
        "juniper_junos",
        {"commit confirmed 2": "commit complete", "commit": "commit complete"},
        confirm_timeout=90,
    )
    d.apply(access_move("juniper_junos"))
    assert s.log == [
        "configure private",
        f"delete {SW} vlan members 100",
        f"set {SW} vlan members 200",
        "commit confirmed 2",
        "commit",
        "exit configuration-mode",
    ]


def test_junos_rejected_line_rolls_back() -> None:
    bad = f"set {SW} vlan members 200"
    d, s = scripted("juniper_junos", {bad: "      ^\nsyntax error."})
    with pytest.raises(CommandRejected, match="rolled back"):
        d.apply(access_move("juniper_junos"))
    assert s.log[-2:] == ["rollback 0", "exit configuration-mode"]
    assert not any(c.startswith("commit") for c in s.log)


def test_junos_failed_commit_rolls_back() -> None:
    d, s = scripted("juniper_junos", {"commit confirmed 1": "error: commit failed: (missing vlan)"})
    with pytest.raises(CommitError):
        d.apply(access_move("juniper_junos"))
    assert s.log[-2:] == ["rollback 0", "exit configuration-mode"]


def test_junos_shared_database_modified_is_lock_denied() -> None:
    d, s = scripted(
        "juniper_junos", {"configure private": "error: shared configuration database modified"}
    )
    with pytest.raises(LockDenied):
        d.apply(access_move("juniper_junos"))
    assert s.log == ["configure private"]


def test_junos_lost_session_after_commit_confirmed_says_it_rolls_back() -> None:
    d, _ = scripted(
        "juniper_junos", {"commit confirmed 1": "commit complete", "commit": ConnectError("gone")}
    )
    with pytest.raises(CommitError, match="rolls back in 1 min"):
        d.apply(access_move("juniper_junos"))


def test_eos_config_session_commit_and_abort() -> None:
    d, s = scripted("arista_eos", {})
    d.apply(access_move("arista_eos"))
    assert s.log[0].startswith("configure session torshim-") and s.log[-1] == "commit"
    d, s = scripted("arista_eos", {"   switchport access vlan 200": "% Invalid input"})
    with pytest.raises(CommandRejected, match="session aborted"):
        d.apply(access_move("arista_eos"))
    assert s.log[-1] == "abort" and "commit" not in s.log
    d, s = scripted("arista_eos", {"   switchport access vlan 200": "% Invalid input"})
    d.params = params("arista_eos", options={"config_session": False})
    d._session = s
    with pytest.raises(CommandRejected):  # no session: restore reads the port, which fails here
        d.apply(access_move("arista_eos"))
    assert "abort" not in s.log and not s.log[0].startswith("configure session")


def test_cumulus_stage_apply_and_detach() -> None:
    apply = with_rc("nv config apply -y")
    d, s = scripted("cumulus_linux", {apply: "applied [rev_id: 4]\nrc=0"})
    d.apply(access_move("cumulus_linux"))
    assert s.log == [with_rc(line) for line in access_move("cumulus_linux").lines] + [apply]
    d, s = scripted("cumulus_linux", {apply: "Error: Invalid config [rev_id: 5]\nrc=1"})
    with pytest.raises(CommitError):
        d.apply(access_move("cumulus_linux"))
    assert s.log[-1] == with_rc("nv config detach")


def test_ios_rejected_line_restores_the_port() -> None:
    ch = access_move("cisco_ios")
    show = "show running-config interface GigabitEthernet0/1"
    half = "!\ninterface GigabitEthernet0/1\n switchport access vlan 200\n switchport mode access\n"
    d, s = scripted("cisco_ios", {" switchport access vlan 200": "% Bad VLAN list", show: half})
    with pytest.raises(CommandRejected, match="touched ports restored"):
        d.apply(ch)
    assert s.log[-3:] == [show, "interface GigabitEthernet0/1", " switchport access vlan 100"]
