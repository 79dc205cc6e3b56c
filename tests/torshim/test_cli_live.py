"""The CLI drivers against real servers: the `linux` driver on a Linux switch in a netns behind
sshd (tests/torshim/linux_switch.py), checked by looking at the bridges themselves; cisco_ios
against fake-switches' stateful Cisco model when it is installed."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.torshim.cli_helpers import A, T
from tests.torshim.linux_switch import (  # noqa: F401 - linux_sw is a fixture
    LinuxSwitch,
    linux_switch_fixture,
    needs_linux_switch,
)
from torshim.drivers import cisco_ios, linux
from torshim.drivers.base import SwitchParams
from torshim.errors import CommandRejected, ConnectError
from torshim.model import PortChange, PortConfig

# -- a real Linux switch over sshd ----------------------------------------------------------------


@pytest.fixture
def lsw(linux_sw: LinuxSwitch) -> Iterator[tuple[LinuxSwitch, linux.LinuxSwitch]]:
    d = linux.LinuxSwitch(linux_sw.params())
    try:
        yield linux_sw, d
    finally:
        d.close()


@needs_linux_switch
def test_linux_switch_access_move_release(lsw: tuple[LinuxSwitch, linux.LinuxSwitch]) -> None:
    sw, d = lsw
    assert d.read(["swp1", "swp2"]) == {"swp1": PortConfig("swp1"), "swp2": PortConfig("swp2")}

    r = d.converge({"swp1": A("swp1", 100)})
    assert r.committed and r.verified
    assert sw.master("swp1") == "br-v100"
    assert sw.bridge_members() == {"br-v100": {"swp1"}}
    assert "UP" in sw.links()["br-v100"]["flags"]

    d.converge({"swp1": A("swp1", 200), "swp2": A("swp2", 100)})
    assert sw.bridge_members() == {"br-v100": {"swp2"}, "br-v200": {"swp1"}}

    r = d.converge({"swp1": A("swp1", 200)})  # already so: nothing sent
    assert not r.committed and r.changes == ()

    d.converge({"swp1": A("swp1", None), "swp2": A("swp2", None)})
    assert sw.master("swp1") is None and sw.master("swp2") is None
    assert sw.bridge_members() == {"br-v100": set(), "br-v200": set()}  # bridges stay
    assert sw.master("swp3") is None
    assert d.session.connect_seconds is not None and d.session.saves == 0  # one session, no save


@needs_linux_switch
def test_linux_switch_rejected_command_changes_nothing(
    lsw: tuple[LinuxSwitch, linux.LinuxSwitch],
) -> None:
    sw, d = lsw
    d.converge({"swp2": A("swp2", 300)})
    before = {p: sw.master(p) for p in sw.ports}
    # swp1's lines succeed, then swp9 (no such port on the switch) fails: swp1 is put back.
    cs = d.render(
        [
            PortChange(PortConfig("swp1"), A("swp1", 100)),
            PortChange(A("swp2", 300), A("swp2", 100)),
            PortChange(PortConfig("swp9"), A("swp9", 100)),
        ]
    )
    with pytest.raises(CommandRejected, match=r"rc=1.*not restored: swp9") as exc:
        d.apply(cs)
    assert "swp9" in str(exc.value)
    assert {p: sw.master(p) for p in sw.ports} == before
    with pytest.raises(CommandRejected, match="no port swp9"):
        d.converge({"swp9": A("swp9", 100), "swp1": A("swp1", 100)})
    assert {p: sw.master(p) for p in sw.ports} == before
    # the session survived both failures
    assert d.read(["swp2"]) == {"swp2": A("swp2", 300)}


def _has_8021q(ns: str) -> bool:
    res = subprocess.run(
        [
            "ip",
            "-n",
            ns,
            "link",
            "add",
            "link",
            "mgmt0",
            "name",
            "probe.9",
            "type",
            "vlan",
            "id",
            "9",
        ],
        capture_output=True,
    )
    subprocess.run(["ip", "-n", ns, "link", "del", "probe.9"], capture_output=True)
    return res.returncode == 0


@needs_linux_switch
def test_linux_switch_trunk_is_802_1q_subports(lsw: tuple[LinuxSwitch, linux.LinuxSwitch]) -> None:
    sw, d = lsw
    if _has_8021q(sw.ns):
        d.converge({"swp1": T("swp1", {100, 200})})
        assert sw.bridge_members() == {"br-v100": {"swp1.100"}, "br-v200": {"swp1.200"}}
        d.converge({"swp1": T("swp1", {200})})
        assert "swp1.100" not in sw.links()
        return
    # This kernel has no 8021q (our test bed): the switch refuses, and nothing is left behind.
    with pytest.raises(CommandRejected, match="rc=2"):
        d.converge({"swp1": T("swp1", {100, 200})})
    links = sw.links()
    assert "swp1.100" not in links and links["swp1"].get("master") is None


@needs_linux_switch
def test_linux_switch_reconnects_after_the_session_dies(
    lsw: tuple[LinuxSwitch, linux.LinuxSwitch],
) -> None:
    sw, d = lsw
    d.read(["swp1"])
    first = d.session._conn
    listener = sw.pids[0]
    out = subprocess.run(["ip", "netns", "pids", sw.ns], capture_output=True, text=True).stdout
    for pid in (int(p) for p in out.split()):
        if pid != listener:  # the session's sshd and shell: the switch "dropped" us
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while d.session.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    d.converge({"swp1": A("swp1", 100)})
    assert d.session._conn is not first
    assert sw.master("swp1") == "br-v100"


@needs_linux_switch
def test_linux_switch_host_key_mismatch_is_a_connect_error(linux_sw: LinuxSwitch) -> None:
    other = Path(linux_sw.workdir) / "client" / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = Path(linux_sw.workdir) / "client" / "wrong_known_hosts"
    wrong.write_text(f"{linux_sw.host} {Path(f'{other}.pub').read_text()}")
    empty = Path(linux_sw.workdir) / "client" / "empty_known_hosts"
    empty.write_text("")
    for known, why in ((wrong, "BadHostKey"), (empty, "not found in known_hosts")):
        d = linux.LinuxSwitch(linux_sw.params(known_hosts=str(known)))
        with pytest.raises(ConnectError, match=why):
            d.read(["swp1"])
        d.close()
    assert linux_sw.master("swp1") is None


@needs_linux_switch
def test_linux_switch_wrong_key_is_a_connect_error(linux_sw: LinuxSwitch) -> None:
    other = Path(linux_sw.workdir) / "client" / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    d = linux.LinuxSwitch(linux_sw.params(key_file=str(other)))
    with pytest.raises(ConnectError, match="Authentication"):
        d.read(["swp1"])


# -- cisco_ios against fake-switches' stateful Cisco model ----------------------------------------

FAKE_CISCO = """\
import sys
from twisted.internet import reactor
from fake_switches import switch_factory
from fake_switches.transports.ssh_service import SwitchSshService
core = switch_factory.SwitchFactory().get("cisco_generic", "tor2", b"")
SwitchSshService(ip="127.0.0.1", port=int(sys.argv[1]), switch_core=core,
                 users={"admin": b"secret"}).hook_to_reactor(reactor)
reactor.run()
"""


@pytest.fixture
def fake_cisco(tmp_path: Path) -> Iterator[SwitchParams]:
    pytest.importorskip("fake_switches", reason="fake-switches is not installed")
    pytest.importorskip("twisted.conch", reason="fake-switches needs Twisted's conch")
    from fake_switches.transports.ssh_service import getRSAKeys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {getRSAKeys()[0].rsplit(' ', 1)[0]}\n")
    log = tmp_path / "fake.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_CISCO, str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fake-switches did not start: {log.read_text()[-1500:]}")
            time.sleep(0.05)
        # The model has no `end` (TESTBED): leave config mode with `exit`; empty enable secret.
        yield SwitchParams(
            name="tor2",
            driver="cisco_ios",
            host="127.0.0.1",
            port=port,
            username="admin",
            password="secret",
            known_hosts=str(known),
            options={"secret": "", "exit_config": "exit", "save_delay": 3600},
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cisco_ios_against_fake_switches(fake_cisco: SwitchParams) -> None:
    d = cisco_ios.CiscoIos(fake_cisco)
    port = "FastEthernet0/1"
    show = f"show running-config interface {port}"
    try:
        d.converge({port: T(port, {100, 200}, native=10)})
        assert d.read([port])[port] == T(port, {100, 200}, native=10)
        d.converge({port: T(port, {200, 300})})
        text = d.session.command(show)
        assert " switchport trunk allowed vlan 200,300" in text
        assert "native" not in text
        d.converge({port: A(port, 100)})
        assert d.read([port])[port] == A(port, 100)
        # FastEthernet0/99 does not exist: rejected, nothing changed. (Its line goes first: after
        # an unknown interface typed in (config-if) mode the model prints no prompt, unlike IOS;
        # restore after a half-applied push is proven on the Linux switch.)
        cs = d.render(
            [
                PortChange(A("FastEthernet0/99", 1), A("FastEthernet0/99", 300)),
                PortChange(A(port, 100), A(port, 300)),
            ]
        )
        with pytest.raises(CommandRejected, match="Invalid input"):
            d.apply(cs)
        assert d.read([port])[port] == A(port, 100)
        d.converge({port: A(port, None)})
        assert "switchport access vlan" not in d.session.command(show)
        assert d.session.dirty and d.flush_save() and d.session.saves == 1
    finally:
        d.close()


def test_cisco_ios_fake_switch_host_key_checked(fake_cisco: SwitchParams, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text(f"[127.0.0.1]:{fake_cisco.port} {_some_host_key(tmp_path)}\n")
    d = cisco_ios.CiscoIos(SwitchParams(**{**fake_cisco.__dict__, "known_hosts": str(wrong)}))
    with pytest.raises(ConnectError, match="BadHostKeyException"):
        d.read(["FastEthernet0/1"])


def _some_host_key(tmp_path: Path) -> str:
    key = tmp_path / "k"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(key)], check=True
    )
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])
