"""The shim end to end against real switches: Request/Close on netconfd (OpenConfig) and on the
Linux switch, reference counts, policy, rollback on failure, restart, refresh, audit and repair."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.torshim.linux_switch import LinuxSwitch, linux_switch
from tests.torshim.netconf_server import NetconfServer, needs_netconfd
from tests.torshim.shim_helpers import linux_switch_entry, netconf_switch, write_config
from tests.torshim.test_netconf_drivers import look, reset
from torshim.drivers.openconfig import OpenConfigDriver
from torshim.errors import (
    ConflictError,
    ConnectError,
    DeadlineExceeded,
    NotFoundError,
    PolicyError,
    ValidationError,
)
from torshim.model import PortConfig
from torshim.netconf import NetconfSession
from torshim.service import Attachment, Shim
from torshim.store import Store
from torshim.worker import RetryPolicy

MAP = [
    {"node": "node-a", "pf": "ens1f0", "switch": "tor1", "port": "Ethernet1/1"},
    {"node": "node-a", "pf": "0000:3b:00.1", "switch": "tor1", "port": "Ethernet1/2"},
    {"node": "node-b", "pf": "ens1f0", "switch": "tor1", "port": "Ethernet1/3"},
    {
        "node": "node-a",
        "pf": "ens1f0",
        "vf": "0000:3b:02.5",
        "switch": "tor1",
        "port": "Ethernet1/5",
    },
]
P1, P2, P3, P5 = "Ethernet1/1", "Ethernet1/2", "Ethernet1/3", "Ethernet1/5"


def vf(cid: str, service: str = "red.example.com", ns: str | None = "red", **kw: Any) -> Attachment:
    base: dict[str, Any] = {"node": "node-a", "pf": "ens1f0", "vf_pci": "0000:3b:02.0"}
    base.update(kw)
    return Attachment(cid, service, namespace=ns, **base)


class Env:
    def __init__(self, tmp: Path, server: NetconfServer, admin: NetconfSession) -> None:
        self.tmp, self.server, self.admin = tmp, server, admin
        self.shims: list[tuple[Shim, Store]] = []
        self.path, self.config = write_config(
            tmp, netconf_switch(server), MAP, protected=["Ethernet1/8"]
        )

    def shim(self, **kw: Any) -> Shim:
        store = Store(self.config.store.path)
        shim = Shim(self.config, store, **kw)
        self.shims.append((shim, store))
        return shim

    def ports(self, *ports: str) -> dict[str, PortConfig]:
        return look(self.admin, *ports)

    def trunk(self, port: str) -> frozenset[int] | None:
        p = self.ports(port)[port]
        return p.trunk_vlans if p.mode == "trunk" else None

    def close(self) -> None:
        for shim, store in self.shims:
            shim.stop()
            store.close()


@pytest.fixture
def env(tmp_path: Path, server: NetconfServer, admin: NetconfSession) -> Iterator[Env]:
    reset(admin)
    e = Env(tmp_path, server, admin)
    yield e
    e.close()


@needs_netconfd
def test_request_puts_the_vlan_on_the_pf_port_and_answers_the_context(env: Env) -> None:
    shim = env.shim()
    g = shim.request(vf("c1"))
    assert env.trunk(P1) == {100}
    assert str(g.address) == "10.100.0.3/29"  # .1 is the route's next hop, .2 the DNS server
    assert g.port_config == PortConfig.trunk(P1, {100})
    assert g.result is not None and g.result.committed and g.result.verified
    assert shim.store.refcount("tor1", P1, "red.example.com") == 1
    applied = shim.store.applied("tor1", P1)
    assert applied is not None and applied.config == PortConfig.trunk(P1, {100})


@needs_netconfd
def test_reference_counts_decide_when_a_vlan_leaves(env: Env) -> None:
    shim = env.shim()
    shim.request(vf("c1"))
    shim.request(vf("c2", vf_pci="0000:3b:02.1"))
    shim.request(vf("c3", "blue.example.com", "anything", vf_pci="0000:3b:02.2"))
    # a PCI-addressed PF in the port map, on another port
    shim.request(vf("c4", pf="", pf_pci="3b:00.1", vf_pci="0000:3b:0a.0"))
    assert env.trunk(P1) == {100, 200}
    assert env.trunk(P2) == {100}
    shim.close("c1")
    assert env.trunk(P1) == {100, 200}  # c2 still uses red there
    shim.close("c2")
    assert env.trunk(P1) == {200}
    shim.close("c3")
    assert env.trunk(P1) == frozenset()  # released: an empty trunk (no parking VLAN set)
    assert shim.close("c3") is None  # Close may be repeated
    assert env.trunk(P2) == {100}
    assert [c.id for c in shim.store.connections()] == ["c4"]
    assert [lease.connection_id for lease in shim.store.leases()] == ["c4"]


@needs_netconfd
def test_refresh_sends_nothing(env: Env) -> None:
    shim = env.shim()
    first = shim.request(vf("c1"))
    worker = shim._switch("tor1").worker
    before = worker.transactions
    again = shim.request(vf("c1"))
    assert again.result is None and worker.transactions == before
    assert again.address == first.address


@needs_netconfd
@pytest.mark.parametrize(
    ("att", "error", "text"),
    [
        (vf("x", ns="blue"), PolicyError, "may not use"),
        (vf("x", ns=""), PolicyError, "may not use"),
        (vf("x", "green.example.com"), NotFoundError, "no service"),
        (vf("x", "red.example.org"), NotFoundError, "no service"),
        (vf("x", pf="ens9f0"), NotFoundError, "no TOR port"),
        (vf("x", pf="ens9f0", tor_switch="tor1", tor_port="Ethernet1/8"), PolicyError, "protected"),
        (vf("x", pf="ens9f0", tor_switch="tor9", tor_port="Ethernet1/4"), NotFoundError, "tor9"),
        (
            vf("x", pf="ens9f0", tor_switch="tor1", tor_port="Eth1/1\nreload"),
            ValidationError,
            "interface",
        ),
        (vf("x", vf_pci="3b:02.0; rm -rf"), ValidationError, "PCI"),
        (vf("x", node="Node_A"), ValidationError, "node"),
        (vf("", node="node-a"), ValidationError, "id"),
    ],
)
def test_bad_requests_change_nothing(env: Env, att: Attachment, error: type, text: str) -> None:
    shim = env.shim()
    with pytest.raises(error, match=text):
        shim.request(att)
    assert shim.store.connections() == [] and shim.store.leases() == []
    assert shim._switches.get("tor1") is None or shim._switch("tor1").worker.transactions == 0
    assert env.ports(P1)[P1] == PortConfig(P1)


@needs_netconfd
def test_lldp_reported_port_is_used_when_the_map_has_none(env: Env) -> None:
    shim = env.shim()
    shim.request(vf("c1", pf="ens9f0", tor_switch="tor1", tor_port="Ethernet1/4"))
    assert env.trunk("Ethernet1/4") == {100}


@needs_netconfd
def test_whole_port_attachment_is_access_and_exclusive(env: Env) -> None:
    shim = env.shim()
    shim.request(vf("w1", "blue.example.com", node="node-b", vf_pci=None, mode="access"))
    assert env.ports(P3)[P3] == PortConfig.access(P3, 200)
    with pytest.raises(ConflictError):
        shim.request(vf("w2", node="node-b", vf_pci="0000:3b:02.3"))
    assert [c.id for c in shim.store.connections()] == ["w1"]
    shim.close("w1")
    assert env.trunk(P3) == frozenset()


@needs_netconfd
def test_a_vf_with_its_own_port_gets_it_untagged_in_access_mode(env: Env) -> None:
    shim = env.shim()
    pf_port = env.ports(P1)[P1]
    g = shim.request(vf("own", vf_pci="0000:3b:02.5"))  # asks for trunk, as nsmgr does
    assert g.connection.mode == "access" and (g.connection.switch, g.connection.port) == (
        "tor1",
        P5,
    )
    assert env.ports(P5)[P5] == PortConfig.access(P5, 100)
    assert env.ports(P1)[P1] == pf_port  # the PF's port is not touched
    # the VF's port is its own: another service cannot join it
    with pytest.raises(ConflictError):
        shim.request(vf("other", "blue.example.com", ns="blue", vf_pci="0000:3b:02.5"))
    shim.close("own")
    assert env.trunk(P5) == frozenset()


@needs_netconfd
def test_same_id_for_another_port_is_refused(env: Env) -> None:
    shim = env.shim()
    shim.request(vf("c1"))
    with pytest.raises(Exception, match="already recorded"):
        shim.request(vf("c1", pf="", pf_pci="0000:3b:00.1"))
    assert env.trunk(P2) is None and env.trunk(P1) == {100}
    assert len(shim.store.leases()) == 1


@needs_netconfd
def test_unreachable_switch_fails_cleanly(tmp_path: Path, server: NetconfServer) -> None:
    from tests.torshim.netconf_server import free_port

    _, cfg = write_config(
        tmp_path, netconf_switch(server, port=free_port(), connect_timeout=1), MAP
    )
    with Store(cfg.store.path) as store:
        shim = Shim(cfg, store, retry=RetryPolicy(attempts=2, base=0.01, cap=0.01))
        try:
            with pytest.raises((ConnectError, DeadlineExceeded)):
                shim.request(vf("c1"), timeout=5)
            assert store.connections() == [] and store.leases() == []
            assert shim.needs_reconcile() == ["tor1"]  # the port is marked for repair
        finally:
            shim.stop()


@needs_netconfd
def test_state_survives_a_restart(env: Env) -> None:
    first = env.shim()
    g = first.request(vf("c1"))
    first.request(vf("c2", vf_pci="0000:3b:02.1"))
    first.stop()
    second = env.shim()
    assert {c.id for c in second.store.connections()} == {"c1", "c2"}
    assert second.request(vf("c1")).address == g.address
    second.close("c1")
    second.close("c2")
    assert env.trunk(P1) == frozenset()


@needs_netconfd
def test_audit_reports_drift_and_leftovers_and_fix_repairs_them(env: Env) -> None:
    shim = env.shim()
    shim.request(vf("c1"))
    shim.request(vf("c2", "blue.example.com", vf_pci="0000:3b:02.1"))
    # someone edits the switch behind the shim's back: a VLAN gone from P1, a stale one on P3
    rogue = OpenConfigDriver(env.server.params())
    try:
        rogue.converge({P1: PortConfig.trunk(P1, {100}), P3: PortConfig.trunk(P3, {200, 300})})
    finally:
        rogue.close()
    reports = {r.port: r for r in shim.audit("tor1")}
    assert reports[P1].status == "drift" and reports[P1].actual == PortConfig.trunk(P1, {100})
    assert reports[P2].status == "ok"  # mapped, never used, nothing of ours on it
    assert reports[P3].status == "leftover" and "200" in reports[P3].detail
    assert env.trunk(P1) == {100}  # an audit without --fix changes nothing
    fixed = {r.port: r.status for r in shim.audit("tor1", fix=True)}
    assert fixed == {P1: "fixed", P2: "ok", P3: "fixed", P5: "ok"}
    assert env.trunk(P1) == {100, 200} and env.trunk(P3) == frozenset()
    assert {r.status for r in shim.audit("tor1")} == {"ok"}


@needs_netconfd
def test_a_new_session_triggers_reconcile(env: Env) -> None:
    shim = env.shim()
    shim.request(vf("c1"))
    assert shim.reconcile("tor1")[0].status == "ok"
    assert shim.needs_reconcile() == []
    shim._switch("tor1").worker.call(lambda d: d.close()).result(10)
    shim._switch("tor1").worker._drop_driver()  # as after a ConnectError
    reset(env.admin)  # the switch lost its config meanwhile
    shim.audit("tor1")  # the audit's read opens the new session
    assert shim.needs_reconcile() == ["tor1"]
    assert [r.status for r in shim.reconcile("tor1")] == ["fixed", "ok", "ok", "ok"]
    assert env.trunk(P1) == {100} and shim.needs_reconcile() == []


@needs_netconfd
def test_concurrent_requests_on_one_port_all_land(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    shim = env.shim()
    atts = [
        vf(f"c{i}", ("red.example.com", "blue.example.com")[i % 2], vf_pci=f"0000:3b:02.{i}")
        for i in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        grants = list(pool.map(shim.request, atts))
    assert len({g.address for g in grants}) == 4
    assert env.trunk(P1) == {100, 200}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(shim.close, [a.id for a in atts]))
    assert env.trunk(P1) == frozenset() and shim.store.connections() == []


# -- the Linux switch: look at the bridges themselves ---------------------------------------------


@pytest.fixture
def linux_env(tmp_path: Path, netns: Callable[[], str]) -> Iterator[tuple[Shim, LinuxSwitch]]:
    with linux_switch(netns) as sw:
        pmap = [
            {"node": "node-a", "pf": "ens1f0", "switch": sw.name, "port": "swp1"},
            {"node": "node-a", "pf": "ens1f1", "switch": sw.name, "port": "swp2"},
        ]
        _, cfg = write_config(tmp_path, linux_switch_entry(sw), pmap)
        with Store(cfg.store.path) as store:
            shim = Shim(cfg, store)
            try:
                yield shim, sw
            finally:
                shim.stop()


@needs_netconfd  # root, sshd
def test_linux_switch_bridges_follow_connections(linux_env: tuple[Shim, LinuxSwitch]) -> None:
    """Whole-port (access) attachments: this kernel has no 8021q, so no tagged trunk here."""
    shim, sw = linux_env
    access = {"vf_pci": None, "mode": "access"}
    shim.request(vf("a", "blue.example.com", "x", **access))
    shim.request(vf("b", "blue.example.com", "x", pf="ens1f1", **access))
    assert sw.master("swp1") == sw.master("swp2") == "br-v200"
    shim.close("a")
    assert sw.master("swp1") is None and sw.master("swp2") == "br-v200"
    shim.request(vf("c", "red.example.com", "red", **access))
    assert sw.master("swp1") == "br-v100"
    assert [r.status for r in shim.audit(sw.name)] == ["ok", "ok"]
    shim.close("b")
    shim.close("c")
    assert sw.master("swp1") is None and sw.master("swp2") is None


@needs_netconfd
def test_connections_not_refreshed_expire_and_leave_the_port(env: Env) -> None:
    import dataclasses
    import time

    shim = env.shim()
    shim.request(dataclasses.replace(vf("c1"), ttl=60))
    shim.request(dataclasses.replace(vf("c2", "blue.example.com", vf_pci="0000:3b:02.1"), ttl=600))
    shim.request(vf("manual", "blue.example.com", pf="", pf_pci="3b:00.1", vf_pci="0000:3b:0a.0"))
    assert env.trunk(P1) == {100, 200}
    assert shim.expire(time.time() + 30) == []  # nothing due yet
    gone = shim.expire(time.time() + 61)
    assert [c.id for c in gone] == ["c1"] and env.trunk(P1) == {200}
    # a refresh (the same Request again) pushes the expiry out
    shim.request(dataclasses.replace(vf("c2", "blue.example.com", vf_pci="0000:3b:02.1"), ttl=600))
    assert shim.expire(time.time() + 500) == []
    assert {c.id for c in shim.store.connections()} == {"c2", "manual"}
    assert shim.store.leases("red.example.com") == []
