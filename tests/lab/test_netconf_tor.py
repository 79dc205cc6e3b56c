"""lab.netconf_tor against a real netconfd: commits made with torshim's openconfig driver show up
on a Linux bridge data plane that two pods ping across."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from lab import netconf_tor
from lab.netconf_tor import TorAgent, links
from tests.conftest import (
    ip,
    netns,  # noqa: F401 - a fixture
)
from tests.torshim.netconf_server import needs_netconfd, running_server
from torshim.drivers.openconfig import OpenConfigDriver
from torshim.model import PortConfig

pytestmark = [pytest.mark.netns, needs_netconfd]

NC_PORTS = ("Ethernet1/1", "Ethernet1/2", "Ethernet1/3")
PORTS = {p: f"swp{i}" for i, p in enumerate(NC_PORTS, 1)}


def _ping(ns: str, addr: str) -> bool:
    res = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", "-q", addr],
                         capture_output=True)  # fmt: skip
    return res.returncode == 0


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _master(ns: str, dev: str) -> str | None:
    return links(ns)[dev].get("master")


@pytest.mark.parametrize("mode", ["notifications", "polling"])
def test_agent_follows_netconf_commits_onto_bridges(netns, monkeypatch, mode):  # noqa: F811
    if mode == "polling":  # as if the server did not offer :notification
        monkeypatch.setattr(netconf_tor, "NOTIFICATION_CAP", "urn:example:none")
    tor = netns()
    pods = [netns(), netns()]
    for i, dev in enumerate(PORTS.values()):
        ip("link", "add", dev, "netns", tor, "type", "veth", "peer", "name", f"eth{i}", ns=tor)
        ip("link", "set", dev, "up", ns=tor)
    for i, pod in enumerate(pods):
        ip("link", "set", f"eth{i}", "netns", pod, ns=tor)
        ip("addr", "add", f"10.78.0.{i + 1}/24", "dev", f"eth{i}", ns=pod)
        ip("link", "set", f"eth{i}", "up", ns=pod)

    with running_server() as server:
        agent = TorAgent(server.params(name="tor-agent"), tor, PORTS)
        driver = OpenConfigDriver(server.params())
        try:
            agent.start()
            assert agent.mode == mode  # this netconfd does send netconf-config-change
            assert all(_master(tor, d) is None for d in PORTS.values())

            driver.converge({p: PortConfig(p, "access", 100) for p in NC_PORTS[:2]})
            assert _wait(lambda: _master(tor, "swp1") == _master(tor, "swp2") == "br-v100")
            assert _master(tor, "swp3") is None
            assert _wait(lambda: _ping(pods[0], "10.78.0.2"))

            driver.converge({"Ethernet1/2": PortConfig("Ethernet1/2", "access", 200)})
            assert _wait(lambda: _master(tor, "swp2") == "br-v200")
            assert _master(tor, "swp1") == "br-v100"
            assert not _ping(pods[0], "10.78.0.2")

            # a trunk cannot be realised without 8021q: the port leaves every bridge
            driver.converge(
                {"Ethernet1/1": PortConfig("Ethernet1/1", "trunk", None, None, frozenset({100}))}
            )
            assert _wait(lambda: _master(tor, "swp1") is None)
            # hand-made drift is repaired by the next sync
            ip("link", "set", "dev", "swp2", "nomaster", ns=tor)
            agent.sync()
            assert _master(tor, "swp2") == "br-v200"
        finally:
            agent.stop()
            driver.close()
    assert agent._thread is None
