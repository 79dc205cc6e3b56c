"""A real NETCONF switch on loopback for the tests: lab.netconfd's builder (Debian's netconfd
behind a private sshd, see ../shared/TESTBED.md, "NETCONF") on 127.0.0.1:<free port>, with switch
ports Ethernet1/1..Ethernet1/8, plus the skip marker and fixtures.

Debugging: TORSHIM_NETCONFD_LOG_LEVEL=debug and TORSHIM_NETCONFD_KEEP_LOGS=<dir> keep netconfd's
log after stop(); TORSHIM_OPENCONFIG_YANG points at other OpenConfig modules.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lab import netconfd
from lab.netconfd import NETCONFD, SSHD, SUBSYSTEM, Mode, free_port, startup_xml

__all__ = [
    "NETCONFD",
    "PORTS",
    "SSHD",
    "SUBSYSTEM",
    "YANG_DIR",
    "NetconfServer",
    "free_port",
    "needs_netconfd",
    "running_server",
    "startup_xml",
]

REPO = Path(__file__).resolve().parents[2]
YANG_DIR = Path(os.environ.get("TORSHIM_OPENCONFIG_YANG", REPO.parent / "shared/yang/openconfig"))
PORTS = tuple(f"Ethernet1/{i}" for i in range(1, 9))

needs_netconfd = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(Path(p).exists() for p in (NETCONFD, SSHD, SUBSYSTEM))
    or not YANG_DIR.is_dir()
    or shutil.which("useradd") is None,
    reason="needs root, netconfd, openssh-server and the OpenConfig YANG modules",
)


class NetconfServer(netconfd.NetconfServer):
    """One netconfd + sshd pair on 127.0.0.1 of the host, in a temporary directory, with a test
    user of its own (see lab.netconfd.NetconfServer)."""

    def __init__(self, mode: Mode = "candidate", ports: Sequence[str] = PORTS) -> None:
        super().__init__(
            mode,
            ports,
            yang_dir=YANG_DIR,
            log_level=os.environ.get("TORSHIM_NETCONFD_LOG_LEVEL", "warn"),
            keep_logs=os.environ.get("TORSHIM_NETCONFD_KEEP_LOGS"),
        )


@contextlib.contextmanager
def running_server(mode: Mode = "candidate") -> Iterator[NetconfServer]:
    server = NetconfServer(mode)
    with server:
        yield server


@pytest.fixture(scope="session")
def netconf_server() -> Iterator[NetconfServer]:
    """netconfd with --target=candidate; shared by the tests of a session (startup is ~0.1 s, but
    stop waits for netconfd, 1-4 s). Tests reset the ports themselves."""
    with running_server("candidate") as server:
        yield server


@pytest.fixture(scope="session")
def netconf_server_running() -> Iterator[NetconfServer]:
    """netconfd with --target=running --with-startup=true (no candidate)."""
    with running_server("running") as server:
        yield server
