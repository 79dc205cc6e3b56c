"""TOR attachment: lldpcli's two JSON flavours, the static/LLDP priority, and a real lldpd pair."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nicinventory import TorPort
from nicinventory.tor import TorMap, parse_lldp_neighbors, read_lldp_neighbors
from tests.conftest import ip, needs_root

MAC = "06:5b:b6:7c:94:1c"


def json_port(kind: str, value: str, descr: str) -> dict[str, Any]:
    """A `-f json` port: an id of some subtype, and a description."""
    return {"id": {"type": kind, "value": value}, "descr": descr, "ttl": "120"}


def json_iface(system: str | None, port: dict[str, Any]) -> dict[str, Any]:
    """A `-f json` neighbour; lldpcli keys the chassis by system name when there is one."""
    chassis_body = {"id": {"type": "mac", "value": MAC}, "descr": "Debian GNU/Linux 12"}
    chassis = {system: chassis_body} if system else chassis_body
    return {"via": "LLDP", "rid": "1", "age": "0 day, 00:00:02", "chassis": chassis, "port": port}


def json0_iface(
    ifname: str, system: str | None, kind: str, value: str, descr: str
) -> dict[str, Any]:
    """A `-f json0` neighbour: every value a list of objects, names under "name"/"value"."""
    chassis: dict[str, Any] = {"id": [{"type": "mac", "value": MAC}]}
    if system:
        chassis["name"] = [{"value": system}]
    chassis["descr"] = [{"value": "Debian GNU/Linux 12"}]
    port = {"id": [{"type": kind, "value": value}], "descr": [{"value": descr}]}
    return {"name": ifname, "via": "LLDP", "chassis": [chassis], "port": [port]}


# -- `-f json` ------------------------------------------------------------------------------------


def test_json_one_interface_is_an_object_keyed_by_ifname() -> None:
    # Exactly what lldpcli 1.0.16 printed for a veth peer named swp1 (port id type mac).
    doc = {"lldp": {"interface": {"ens1f0": json_iface("tor-a", json_port("mac", MAC, "swp1"))}}}
    assert parse_lldp_neighbors(doc) == {"ens1f0": TorPort("tor-a", "swp1", "lldp")}


def test_json_several_interfaces_are_a_list_of_one_key_objects() -> None:
    doc = {
        "lldp": {
            "interface": [
                {"ens1f0": json_iface("tor-a", json_port("ifname", "Ethernet1/1", "to node-a"))},
                {"ens1f1": json_iface("tor-b", json_port("mac", MAC, "Ethernet7"))},
            ]
        }
    }
    assert parse_lldp_neighbors(doc) == {
        "ens1f0": TorPort("tor-a", "Ethernet1/1", "lldp"),
        "ens1f1": TorPort("tor-b", "Ethernet7", "lldp"),
    }


def test_json_chassis_without_system_name_falls_back_to_chassis_id() -> None:
    doc = {"lldp": {"interface": {"ens1f0": json_iface(None, json_port("ifname", "swp3", "x"))}}}
    assert parse_lldp_neighbors(doc) == {"ens1f0": TorPort(MAC, "swp3", "lldp")}


@pytest.mark.parametrize(
    ("kind", "value", "descr", "port"),
    [
        ("ifname", "Ethernet1/1", "uplink to node-a", "Ethernet1/1"),  # the id names the port
        ("local", "swp7", "server port", "swp7"),
        ("mac", MAC, "swp1", "swp1"),  # a MAC names nothing: the description is the port
        ("ip", "192.0.2.1", "Ethernet9", "Ethernet9"),
    ],
)
def test_json_port_name_by_id_subtype(kind: str, value: str, descr: str, port: str) -> None:
    doc = {"lldp": {"interface": {"ens1f0": json_iface("tor-a", json_port(kind, value, descr))}}}
    assert parse_lldp_neighbors(doc) == {"ens1f0": TorPort("tor-a", port, "lldp")}


def test_json_port_without_descr_uses_the_id_value() -> None:
    port = {"id": {"type": "mac", "value": MAC}, "ttl": "120"}
    doc = {"lldp": {"interface": {"ens1f0": json_iface("tor-a", port)}}}
    assert parse_lldp_neighbors(doc) == {"ens1f0": TorPort("tor-a", MAC, "lldp")}


@pytest.mark.parametrize(
    "doc",
    [{}, {"lldp": {}}, {"lldp": []}, {"lldp": [{}]}, {"lldp": {"interface": []}}, {"lldp": "x"}],
)
def test_no_neighbours(doc: dict[str, Any]) -> None:
    assert parse_lldp_neighbors(doc) == {}


def test_neighbour_without_port_or_chassis_is_skipped() -> None:
    doc = {
        "lldp": {
            "interface": [
                {"ens1f0": {"via": "LLDP", "chassis": {"tor-a": {"id": {"value": MAC}}}}},
                {"ens1f1": {"via": "LLDP", "port": json_port("ifname", "swp2", "")}},
                {"ens1f2": json_iface("tor-c", json_port("ifname", "swp3", ""))},
            ]
        }
    }
    assert parse_lldp_neighbors(doc) == {"ens1f2": TorPort("tor-c", "swp3", "lldp")}


# -- `-f json0` -----------------------------------------------------------------------------------


def test_json0_real_shape() -> None:
    doc = {"lldp": [{"interface": [json0_iface("ens1f0", "tor-a", "mac", MAC, "swp1")]}]}
    assert parse_lldp_neighbors(doc) == {"ens1f0": TorPort("tor-a", "swp1", "lldp")}


def test_json0_several_interfaces_and_no_system_name() -> None:
    doc = {
        "lldp": [
            {
                "interface": [
                    json0_iface("ens1f0", "tor-a", "ifname", "Ethernet1/1", "to node-a"),
                    json0_iface("ens1f1", None, "mac", MAC, "Ethernet1/2"),
                ]
            }
        ]
    }
    assert parse_lldp_neighbors(doc) == {
        "ens1f0": TorPort("tor-a", "Ethernet1/1", "lldp"),
        "ens1f1": TorPort(MAC, "Ethernet1/2", "lldp"),
    }


# -- TorMap ---------------------------------------------------------------------------------------

BY_PCI = TorPort("tor-s", "Eth1", "config")
BY_NAME = TorPort("tor-s", "Eth2", "config")
SEEN = TorPort("tor-l", "swp1", "lldp")


@pytest.mark.parametrize(
    ("static", "lldp", "pci", "ifname", "want"),
    [
        ({"0000:3b:00.0": BY_PCI}, {"ens1f0": SEEN}, "0000:3b:00.0", "ens1f0", BY_PCI),
        ({"ens1f0": BY_NAME}, {"ens1f0": SEEN}, "0000:3b:00.0", "ens1f0", BY_NAME),
        ({"0000:3b:00.0": BY_PCI, "ens1f0": BY_NAME}, {}, "0000:3b:00.0", "ens1f0", BY_PCI),
        ({"ens1f1": BY_NAME}, {"ens1f0": SEEN}, "0000:3b:00.0", "ens1f0", SEEN),
        ({"0000:3b:00.1": BY_PCI}, {"ens1f1": SEEN}, "0000:3b:00.0", "ens1f0", None),
        ({"0000:3b:00.0": BY_PCI}, {"ens1f0": SEEN}, "0000:3b:00.0", None, BY_PCI),
        ({}, {"ens1f0": SEEN}, "0000:3b:00.0", None, None),
        ({}, {}, "0000:3b:00.0", "ens1f0", None),
    ],
)
def test_tor_map_priority(
    static: dict[str, TorPort],
    lldp: dict[str, TorPort],
    pci: str,
    ifname: str | None,
    want: TorPort | None,
) -> None:
    assert TorMap(static, lldp).lookup(pci, ifname) == want


# -- read_lldp_neighbors --------------------------------------------------------------------------


def test_read_without_lldpcli_is_empty(tmp_path: Path) -> None:
    assert read_lldp_neighbors(str(tmp_path / "no-lldpcli")) == {}
    assert read_lldp_neighbors("nicinventory-no-such-lldpcli") == {}


@pytest.mark.skipif(shutil.which("lldpcli") is None, reason="lldpcli not installed")
def test_read_without_daemon_is_empty(tmp_path: Path) -> None:
    sock = tmp_path / "lldpd.socket"
    assert read_lldp_neighbors(ctl_socket=str(sock)) == {}
    assert not sock.exists()


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ('{"lldp": {"interface": {"eth9": {"chassis": {"sw": {}}, "port": {"descr": "p9"}}}}}', 1),
        ("this is not json", 0),
        ("", 0),
    ],
)
def test_read_runs_lldpcli_with_the_socket(tmp_path: Path, body: str, want: int) -> None:
    """A stand-in lldpcli: what it is asked, and that non-JSON output means no data."""
    argv, out = tmp_path / "argv", tmp_path / "out"
    out.write_text(body)
    exe = tmp_path / "lldpcli"
    exe.write_text(f'#!/bin/sh\necho "$@" > {argv}\ncat {out}\n')
    exe.chmod(0o755)
    got = read_lldp_neighbors(str(exe), ctl_socket="/run/x.sock")
    assert argv.read_text().split() == ["-u", "/run/x.sock", "-f", "json", "show", "neighbors"]
    assert got == ({"eth9": TorPort("sw", "p9", "lldp")} if want else {})


# -- a real lldpd pair in two namespaces ----------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@pytest.fixture
def lldpd_dir() -> Iterator[Path]:
    """Sockets and logs of the test's lldpd pair, removed afterwards.

    Not under tmp_path: lldpcli is setuid _lldpd and must traverse every directory up to the
    socket, and pytest's /tmp/pytest-of-root is 0700.
    """
    path = Path(tempfile.mkdtemp(prefix="nsmtest-lldpd-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@needs_root
@pytest.mark.skipif(
    shutil.which("lldpd") is None or shutil.which("lldpcli") is None, reason="lldpd not installed"
)
def test_real_lldp_neighbour(netns: Any, lldpd_dir: Path) -> None:
    node, tor = netns(), netns()
    ip("link", "add", "ens1f0", "netns", node, "type", "veth", "peer", "name", "swp1", "netns", tor)
    ip("link", "set", "ens1f0", "up", ns=node)
    ip("link", "set", "swp1", "up", ns=tor)
    socks = {name: str(lldpd_dir / f"{name}.sock") for name in ("node", "tor")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, ns, ifname in (("node", node, "ens1f0"), ("tor", tor, "swp1")):
            cmd = ["ip", "netns", "exec", ns, "lldpd", "-d", "-u", socks[name], "-I", ifname]
            cmd += ["-p", str(lldpd_dir / f"{name}.pid")]
            with (lldpd_dir / f"{name}.log").open("wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        # lldpd starts paused until its own `lldpcli ... resume`; `configure` rewrites the whole
        # config, paused flag included, so configuring before that resume can re-pause it for good.
        deadline = time.monotonic() + 10
        while min(_transmitted(s) for s in socks.values()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        tor_cli = ["lldpcli", "-u", socks["tor"]]
        for cmd in (
            ["configure", "system", "hostname", "tor-a"],
            ["configure", "lldp", "tx-interval", "1"],  # a lost frame is resent within 1 s
            ["update"],
        ):
            subprocess.run([*tor_cli, *cmd], check=True, capture_output=True, timeout=5)
        want = {"ens1f0": TorPort("tor-a", "swp1", "lldp")}
        got: dict[str, TorPort] = {}
        while got != want and time.monotonic() < deadline:
            time.sleep(0.1)
            got = read_lldp_neighbors(ctl_socket=socks["node"])
        assert got == want, {name: _transmitted(s) for name, s in socks.items()}
    finally:
        left = _stop(procs)
    assert left == []


def _transmitted(sock: str) -> int:
    """LLDPDUs an lldpd has sent so far; 0 while it is not answering."""
    res = subprocess.run(
        ["lldpcli", "-u", sock, "-f", "json", "show", "statistics", "summary"],
        capture_output=True,
        text=True,
        timeout=5,
    )
    try:
        return int(json.loads(res.stdout)["lldp"]["summary"]["tx"]["tx"])
    except (ValueError, KeyError, TypeError):
        return 0


def _alive(pid: int) -> bool:
    """Running and an lldpd (a zombie's cmdline is empty; a reused pid is someone else's)."""
    try:
        return b"lldpd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """Terminate each lldpd monitor (it passes SIGTERM to its privilege-separated worker), by pid.

    The monitor may exit before reaping its worker, which pid 1 then reaps: wait for that too, so
    that `pgrep lldpd` shows nothing afterwards. Returns the worker pids still running (none).
    """
    kids = [k for p in procs for k in _children(p.pid)]
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 3
    while any(os.path.exists(f"/proc/{k}") for k in kids) and time.monotonic() < deadline:
        if time.monotonic() > deadline - 1:
            for k in kids:
                if _alive(k):
                    os.kill(k, signal.SIGKILL)
        time.sleep(0.05)
    return [k for k in kids if _alive(k)]
