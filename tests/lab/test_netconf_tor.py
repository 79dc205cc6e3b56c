"""lab.netconf_tor against a real netconfd: commits made with torshim's openconfig driver show up
on a Linux bridge data plane that two pods ping across."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import yaml

from lab import netconf_tor
from lab.netconf_tor import TorAgent, links
from tests.conftest import (
    ip,
    netns,  # noqa: F401 - a fixture
)
from tests.lab.conftest import ping as _ping
from tests.lab.conftest import wait_until as _wait
from tests.torshim.netconf_server import needs_netconfd, running_server
from tests.torshim.shim_helpers import netconf_switch
from torshim.drivers.openconfig import OpenConfigDriver
from torshim.model import PortConfig

pytestmark = [pytest.mark.netns, needs_netconfd]

NC_PORTS = ("Ethernet1/1", "Ethernet1/2", "Ethernet1/3")
PORTS = {p: f"swp{i}" for i, p in enumerate(NC_PORTS, 1)}


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


def test_agent_as_a_process_until_sigterm(netns, tmp_path):  # noqa: F811
    """`python -m lab.netconf_tor`, as `nsm-lab up --switch netconf` runs it: ready after its
    first sync, follows commits, exits 0 on SIGTERM."""
    tor = netns()
    for dev in PORTS.values():
        ip("link", "add", dev, "type", "veth", "peer", "name", f"p-{dev}", ns=tor)
    with running_server() as server:
        config = tmp_path / "torshim.yaml"
        config.write_text(yaml.safe_dump({"switches": [netconf_switch(server)]}))
        ready = tmp_path / "ready"
        ports = ",".join(f"{nc}={dev}" for nc, dev in PORTS.items())
        log = open(tmp_path / "agent.log", "w+")  # noqa: SIM115 - read after the process ends
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab.netconf_tor", "--config", str(config), "--switch", "tor1",
             "--netns", tor, "--ports", ports, "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        driver = OpenConfigDriver(server.params())
        try:
            assert _wait(lambda: ready.exists() or proc.poll() is not None, 20), "no ready file"
            assert ready.read_text().split() == [str(proc.pid), "notifications"]
            driver.converge({"Ethernet1/3": PortConfig("Ethernet1/3", "access", 300)})
            assert _wait(lambda: _master(tor, "swp3") == "br-v300")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        finally:
            driver.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            text = log.read()
            log.close()
    assert "swp3 master br-v300" in text and "stopping" in text, text
