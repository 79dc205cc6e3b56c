"""The PF side: the netlink backend against a veth "PF" gets the kernel's refusal as a clear
error and changes nothing; `none` says what it skipped; and the agent records, applies and
restores PF-side settings exactly, in order, through any PfSide (a recording fake here, since no
real PF is at hand)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import pytest

from nsmgr import journal as journal_mod
from nsmgr.agent import Agent
from nsmgr.config import parse_config
from nsmgr.errors import PfSideError
from nsmgr.model import AttachRequest, PodRef, ServiceRef
from nsmgr.netlink import VfInfo
from nsmgr.pfside import Change, NetlinkPfSide, NoPfSide, PfResult, VfSettings, restore_changes
from nsmgr.plumbing import Node
from tests.conftest import needs_root
from tests.nsmgr.node import FakeNode, links

pytestmark = [needs_root, pytest.mark.netns]
ORIGINAL = VfInfo(0, "00:00:00:00:00:00", 0, 0, "802.1Q", True, False, 0, 0, "auto")
ASKED = VfSettings(
    mac="02:00:00:00:aa:01", vlan=100, qos=2, spoofchk=False, trust=True, max_tx_rate=5000,
    link_state="enable",
)  # fmt: skip
PF_SERVICE = {
    "name": "hw.example.com",
    "vlan": 100,
    "vlan_qos": 2,
    "mtu": 1500,
    "vf": {"spoofchk": False, "trust": True, "max_tx_rate": 5000, "link_state": "enable"},
}


def test_netlink_pf_side_on_veth_is_refused_and_changes_nothing(node: FakeNode) -> None:
    n = Node(f"/run/netns/{node.ns}")
    try:
        pf = NetlinkPfSide(n.rtnl)
        before = node.links()
        assert pf.read("pf0", 0) is None  # a veth reports no IFLA_VFINFO_LIST
        result = pf.apply("pf0", 0, ASKED.changes())
        assert result.status == "refused" and result.applied == ()
        assert result.reason == "PF pf0 refused VF 0 mac 02:00:00:00:aa:01: Operation not supported"
        with pytest.raises(PfSideError, match=r"^PF pf0 refused VF 0 mac"):
            result.raise_for_status()
        assert node.links() == before
        missing = pf.apply("nope0", 0, ASKED.changes())
        assert (
            missing.status == "refused"
            and "PF nope0 is not in the node's namespace" in missing.reason
        )
        assert pf.apply("pf0", 0, []).status == "nothing"
    finally:
        n.close()


def test_none_says_what_it_skipped() -> None:
    result = NoPfSide().apply("pf0", 3, VfSettings(vlan=100, trust=True).changes())
    assert result == PfResult("skipped", (), "pf_side is none: vlan, trust not set on the PF")
    assert result.raise_for_status() is result
    assert NoPfSide().read("pf0", 3) is None


def test_restore_puts_back_what_was_applied_in_reverse() -> None:
    assert restore_changes(ORIGINAL, ["mac", "vlan", "trust"]) == [
        ("trust", False),
        ("vlan", (0, 0, "802.1Q")),
        ("mac", "00:00:00:00:00:00"),
    ]
    unknown = dataclasses.replace(ORIGINAL, spoofchk=None)  # the driver never reported it
    assert restore_changes(unknown, ["spoofchk"]) == []


class FakePf:
    """A PF that keeps its VFs' settings in memory, optionally refusing one setting."""

    name = "fake"

    def __init__(self, refuse: str = "") -> None:
        self.state: dict[int, VfInfo] = {}
        self.refuse = refuse
        self.log: list[Change] = []

    def read(self, pf_ifname: str | None, vf_index: int) -> VfInfo | None:
        return self.state.setdefault(vf_index, dataclasses.replace(ORIGINAL, vf=vf_index))

    def apply(self, pf_ifname: str | None, vf_index: int, changes: list[Change]) -> PfResult:
        done: list[str] = []
        for setting, value in changes:
            if setting == self.refuse:
                return PfResult(
                    "refused", tuple(done), f"PF {pf_ifname} refused VF {vf_index} {setting}"
                )
            cur = self.state[vf_index]
            fields: dict[str, Any] = {setting: value}
            if setting == "vlan":
                fields = {"vlan": value[0], "qos": value[1], "proto": value[2]}
            elif setting == "rate":
                fields = {"min_tx_rate": value[0], "max_tx_rate": value[1]}
            self.state[vf_index] = dataclasses.replace(cur, **fields)
            self.log.append((setting, value))
            done.append(setting)
        return PfResult("applied", tuple(done))


def agent_with(node: FakeNode, pf: Any) -> Agent:
    node.services.append(PF_SERVICE)
    agent = Agent(parse_config(node.config()), pf_side=pf)
    agent.start()
    return agent


def hw_request(node: FakeNode, pod: str, pci: str | None = None) -> AttachRequest:
    return AttachRequest(
        ServiceRef.parse("hw.example.com"), pci or node.vfs[0], pod, "nsm0", PodRef("a", "b", "c")
    )


def test_agent_applies_and_restores_pf_settings(node: FakeNode) -> None:
    pf = FakePf()
    agent = agent_with(node, pf)
    try:
        before = node.shapes()
        info = agent.request(hw_request(node, node.pod()))
        assert info.pf_status == "applied" and info.vlan == 100
        assert pf.state[0] == VfInfo(
            0, "00:00:00:00:00:00", 100, 2, "802.1Q", False, True, 0, 5000, "enable"
        )
        vfio = agent.request(hw_request(node, node.pod(), node.vfio[0]))
        assert vfio.mechanism == "VFIO" and pf.state[4].vlan == 100  # PF side only
        agent.close(info.id)
        agent.close(vfio.id)
        assert pf.state[0] == ORIGINAL and pf.state[4] == dataclasses.replace(ORIGINAL, vf=4)
        assert node.shapes() == before
    finally:
        agent.stop()


def test_a_refused_setting_rolls_back_the_others(node: FakeNode) -> None:
    pf = FakePf(refuse="trust")
    agent = agent_with(node, pf)
    try:
        before = node.shapes()
        pod = node.pod()
        with pytest.raises(PfSideError, match=r"^PF pf0 refused VF 0 trust$"):
            agent.request(hw_request(node, pod))
        assert pf.state[0] == ORIGINAL  # vlan and spoofchk went through, and came back
        assert [s for s, _ in pf.log] == ["vlan", "spoofchk", "spoofchk", "vlan"]
        assert node.shapes() == before
        assert agent.connections() == []
    finally:
        agent.stop()


def test_netlink_pf_side_refuses_settings_it_cannot_record(
    node: FakeNode, make_agent: Callable[..., Agent]
) -> None:
    node.services.append(PF_SERVICE)
    agent = make_agent(pf_side="netlink")
    before = node.shapes()
    with pytest.raises(
        PfSideError, match=r"PF pf0 reports no settings for VF 0 \(no IFLA_VFINFO_LIST\)"
    ):
        agent.request(hw_request(node, node.pod()))
    assert node.shapes() == before and agent.connections() == []
    # a service that asks nothing of the PF works with the netlink backend on veth too
    ok = agent.request(
        AttachRequest(ServiceRef.parse("open.example.com"), node.vfs[1], node.pod(), "nsm0")
    )
    assert ok.pf_status == "nothing"


class Crash(BaseException):
    """What SIGKILL does to the agent, in-process: no except clause of the agent sees it."""


@pytest.mark.parametrize("phase", ["attach:pf", "attach:move", "detach:pf", "detach:netns"])
def test_crash_with_pf_settings_then_restart(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    pf = FakePf()
    first = agent_with(node, pf)
    before = node.shapes()
    real_write = journal_mod.Journal.write

    def write(self: journal_mod.Journal, rec: journal_mod.VfRecord) -> None:
        real_write(self, rec)
        if rec.phase == phase:
            raise Crash(phase)

    pod = node.pod()
    monkeypatch.setattr(journal_mod.Journal, "write", write)
    with pytest.raises(Crash):
        info = first.request(hw_request(node, pod))
        first.close(info.id)
    monkeypatch.setattr(journal_mod.Journal, "write", real_write)
    first.stop()  # its fds and locks go, as with a killed process
    second = Agent(parse_config(node.config()), pf_side=pf)
    second.start()
    try:
        assert second.connections() == []
        assert pf.state[0] == ORIGINAL
        assert node.shapes() == before
        assert set(links(os.path.basename(pod))) == {"lo"}
    finally:
        second.stop()


def test_pf_differences() -> None:
    from nsmgr.pfside import pf_differences

    now = dataclasses.replace(ORIGINAL, vlan=100, qos=2, trust=True)
    assert pf_differences(ORIGINAL, now, ["vlan", "trust", "mac"]) == [
        "vlan 100/2/802.1Q (want 0/0/802.1Q)",
        "trust True (want False)",
    ]


def test_a_pf_that_does_not_take_a_setting_back_keeps_the_vf_pending(node: FakeNode) -> None:
    class StickyTrust(FakePf):
        """A driver that accepts turning trust off and ignores it."""

        def apply(self, pf_ifname: str | None, vf_index: int, changes: list[Change]) -> PfResult:
            kept = [(s, v) for s, v in changes if not (s == "trust" and v is False)]
            result = super().apply(pf_ifname, vf_index, kept)
            return PfResult(result.status, tuple(s for s, _ in changes), result.reason)

    agent = agent_with(node, StickyTrust())
    try:
        info = agent.request(hw_request(node, node.pod()))
        with pytest.raises(Exception, match=r"its PF reports trust True \(want False\)"):
            agent.close(info.id)
        (pending,) = agent.connections()
        assert pending.state == "detaching" and "trust True" in pending.error
    finally:
        agent.stop()
