"""The NETCONF drivers: golden renders (openconfig, junos), injection refused before any session,
the session's transaction against a real netconfd behind sshd (tests/torshim/netconf_server.py),
and the junos transaction against a recording stand-in (no Junos server exists here)."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ncclient.transport.session
import pytest
from lxml import etree
from ncclient.operations.errors import TimeoutExpiredError
from ncclient.operations.rpc import RPCError
from ncclient.transport.errors import SSHError

from tests.torshim.netconf_server import NetconfServer, free_port, needs_netconfd, running_server
from torshim.drivers import openconfig as oc_mod
from torshim.drivers.base import SwitchParams, driver_class
from torshim.drivers.junos import JunosDriver
from torshim.drivers.junos import parse_ports as junos_parse
from torshim.drivers.openconfig import OpenConfigDriver
from torshim.errors import (
    CommandRejected,
    CommitError,
    ConnectError,
    LockDenied,
    ValidationError,
    VerifyError,
)
from torshim.model import Changeset, PortChange, PortConfig
from torshim.netconf import CAP, NetconfSession, classify, hello_probe

P = PortConfig
PORTS = tuple(f"Ethernet1/{i}" for i in range(1, 9))
INJECTIONS = ["Ethernet1/1\nreload", "100; rm", "<evil/>", "]]>]]>"]


def params(**kw: Any) -> SwitchParams:
    base: dict[str, Any] = dict(name="tor1", driver="openconfig", host="127.0.0.1")
    base.update(kw)
    return SwitchParams(**base)


def no_session(p: SwitchParams, device_params: object = None) -> Any:
    raise AssertionError("a session was opened")


def xml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# -- golden renders: openconfig ----------------------------------------------------------------
OC_HEAD = """\
<nc:config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">
  <interfaces xmlns="http://openconfig.net/yang/interfaces">
    <interface>
      <name>Ethernet1/1</name>
      <ethernet xmlns="http://openconfig.net/yang/interfaces/ethernet" nc:operation="merge">
        <switched-vlan xmlns="http://openconfig.net/yang/vlan">
"""
OC_TAIL = """\
        </switched-vlan>
      </ethernet>
    </interface>
  </interfaces>
</nc:config>
"""
OC_GOLDEN = {
    "add-vlan": (
        P.trunk("Ethernet1/1", {100}),
        P.trunk("Ethernet1/1", {100, 200, 300}),
        """\
          <config>
            <trunk-vlans>200</trunk-vlans>
            <trunk-vlans>300</trunk-vlans>
          </config>
""",
    ),
    "remove-vlan": (
        P.trunk("Ethernet1/1", {100, 200}),
        P.trunk("Ethernet1/1", {100}),
        """\
          <config nc:operation="replace">
            <interface-mode>TRUNK</interface-mode>
            <trunk-vlans>100</trunk-vlans>
          </config>
""",
    ),
    "access-mode": (
        P.trunk("Ethernet1/1", {100, 200}, native=5),
        P.access("Ethernet1/1", 10),
        """\
          <config nc:operation="replace">
            <interface-mode>ACCESS</interface-mode>
            <access-vlan>10</access-vlan>
          </config>
""",
    ),
    "native-vlan": (
        P.trunk("Ethernet1/1", {100}),
        P.trunk("Ethernet1/1", {100}, native=5),
        """\
          <config>
            <native-vlan>5</native-vlan>
          </config>
""",
    ),
    "new-trunk": (
        P("Ethernet1/1"),
        P.trunk("Ethernet1/1", {300, 100}, native=7),
        """\
          <config nc:operation="replace">
            <interface-mode>TRUNK</interface-mode>
            <native-vlan>7</native-vlan>
            <trunk-vlans>100</trunk-vlans>
            <trunk-vlans>300</trunk-vlans>
          </config>
""",
    ),
    "unmanage": (
        P.access("Ethernet1/1", 10),
        P("Ethernet1/1"),
        """\
          <config nc:operation="remove"/>
""",
    ),
}


@pytest.mark.parametrize("case", sorted(OC_GOLDEN))
def test_openconfig_golden(case: str) -> None:
    before, after, body = OC_GOLDEN[case]
    cs = OpenConfigDriver(params()).render([PortChange(before, after)])
    assert cs.driver == "openconfig" and cs.lines == ()
    assert cs.xml == OC_HEAD + body + OC_TAIL


def test_openconfig_empty_change_renders_nothing() -> None:
    drv = OpenConfigDriver(params(), session=NetconfSession(params(), connect_fn=no_session))
    same = P.trunk("Ethernet1/1", {100})
    for changes in ([], [PortChange(same, same)]):
        cs = drv.render(changes)
        assert cs.empty and cs.xml == "" and cs.changes == ()
        drv.apply(cs)  # nothing to send: no session


def test_openconfig_several_ports_in_one_document() -> None:
    cs = OpenConfigDriver(params()).render(
        [
            PortChange(P.trunk("Ethernet1/1", set()), P.trunk("Ethernet1/1", {100})),
            PortChange(P.trunk("Ethernet1/2", set()), P.trunk("Ethernet1/2", {200})),
        ]
    )
    doc = etree.fromstring(cs.xml.encode())
    names = doc.xpath("//*[local-name()='interface']/*[local-name()='name']/text()")
    assert names == ["Ethernet1/1", "Ethernet1/2"]


def test_openconfig_parse_ranges_and_modes() -> None:
    data = etree.fromstring(
        b"""<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">
        <interfaces xmlns="http://openconfig.net/yang/interfaces">
          <interface><name>Ethernet1/1</name>
            <ethernet xmlns="http://openconfig.net/yang/interfaces/ethernet">
              <switched-vlan xmlns="http://openconfig.net/yang/vlan"><config>
                <interface-mode>TRUNK</interface-mode><native-vlan>5</native-vlan>
                <trunk-vlans>10..12</trunk-vlans><trunk-vlans>100</trunk-vlans>
              </config></switched-vlan></ethernet></interface>
          <interface><name>Ethernet1/2</name>
            <ethernet xmlns="http://openconfig.net/yang/interfaces/ethernet">
              <switched-vlan xmlns="http://openconfig.net/yang/vlan"><config>
                <interface-mode>oc-vlan-types:ACCESS</interface-mode><access-vlan>7</access-vlan>
              </config></switched-vlan></ethernet></interface>
          <interface><name>Ethernet1/3</name></interface>
          <interface><name>Ethernet1/4</name></interface>
        </interfaces></data>"""
    )
    got = oc_mod.parse_ports(data, ["Ethernet1/1", "Ethernet1/2", "Ethernet1/3", "Ethernet9/9"])
    assert got == {
        "Ethernet1/1": P.trunk("Ethernet1/1", {10, 11, 12, 100}, native=5),
        "Ethernet1/2": P.access("Ethernet1/2", 7),
        "Ethernet1/3": P("Ethernet1/3"),
    }


# -- golden renders: junos ---------------------------------------------------------------------
JUNOS_GOLDEN = {
    "add-vlan": (
        P.trunk("xe-0/0/1", {100}),
        P.trunk("xe-0/0/1", {100, 200}),
        """\
        <configuration>
          <interfaces>
            <interface>
              <name>xe-0/0/1</name>
              <unit>
                <name>0</name>
                <family>
                  <ethernet-switching>
                    <vlan>
                      <members>200</members>
                    </vlan>
                  </ethernet-switching>
                </family>
              </unit>
            </interface>
          </interfaces>
        </configuration>
        """,
    ),
    "remove-vlan": (
        P.trunk("xe-0/0/1", {100, 200}),
        P.trunk("xe-0/0/1", {200}),
        """\
        <configuration>
          <interfaces>
            <interface>
              <name>xe-0/0/1</name>
              <unit>
                <name>0</name>
                <family>
                  <ethernet-switching replace="replace">
                    <interface-mode>trunk</interface-mode>
                    <vlan>
                      <members>200</members>
                    </vlan>
                  </ethernet-switching>
                </family>
              </unit>
            </interface>
          </interfaces>
        </configuration>
        """,
    ),
    "access-mode": (
        P.trunk("xe-0/0/1", {100}, native=5),
        P.access("xe-0/0/1", 10),
        """\
        <configuration>
          <interfaces>
            <interface>
              <name>xe-0/0/1</name>
              <native-vlan-id delete="delete"/>
              <unit>
                <name>0</name>
                <family>
                  <ethernet-switching replace="replace">
                    <interface-mode>access</interface-mode>
                    <vlan>
                      <members>10</members>
                    </vlan>
                  </ethernet-switching>
                </family>
              </unit>
            </interface>
          </interfaces>
        </configuration>
        """,
    ),
    "native-vlan": (
        P.trunk("xe-0/0/1", {100}),
        P.trunk("xe-0/0/1", {100}, native=5),
        """\
        <configuration>
          <interfaces>
            <interface>
              <name>xe-0/0/1</name>
              <native-vlan-id>5</native-vlan-id>
            </interface>
          </interfaces>
        </configuration>
        """,
    ),
    "unmanage": (
        P.trunk("xe-0/0/1", {100}),
        P("xe-0/0/1"),
        """\
        <configuration>
          <interfaces>
            <interface>
              <name>xe-0/0/1</name>
              <unit>
                <name>0</name>
                <family>
                  <ethernet-switching delete="delete"/>
                </family>
              </unit>
            </interface>
          </interfaces>
        </configuration>
        """,
    ),
}


@pytest.mark.parametrize("case", sorted(JUNOS_GOLDEN))
def test_junos_golden(case: str) -> None:
    before, after, expected = JUNOS_GOLDEN[case]
    cs = JunosDriver(params(driver="junos")).render([PortChange(before, after)])
    assert cs.driver == "junos"
    assert cs.xml == xml(expected)


def test_junos_empty_change_renders_nothing() -> None:
    same = P.trunk("xe-0/0/1", {100})
    for changes in ([], [PortChange(same, same)]):
        assert JunosDriver(params(driver="junos")).render(changes).empty


def test_junos_parse_namespaced_reply_with_vlan_names_and_ranges() -> None:
    data = etree.fromstring(
        b"""<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"
                       xmlns:junos="http://xml.juniper.net/junos/21.4R0/junos"><data>
        <configuration xmlns="http://xml.juniper.net/xnm/1.1/xnm" junos:changed-seconds="1">
          <interfaces>
            <interface><name>xe-0/0/1</name><native-vlan-id>5</native-vlan-id>
              <unit><name>0</name><family><ethernet-switching>
                <interface-mode>trunk</interface-mode>
                <vlan><members>v100</members><members>200-202</members><members>5</members></vlan>
              </ethernet-switching></family></unit></interface>
            <interface><name>xe-0/0/2</name>
              <unit><name>0</name><family><ethernet-switching>
                <vlan><members>300</members></vlan><interface-mode>access</interface-mode>
              </ethernet-switching></family></unit></interface>
            <interface><name>xe-0/0/3</name><unit><name>0</name><family><inet/></family></unit>
            </interface>
          </interfaces>
          <vlans><vlan><name>v100</name><vlan-id>100</vlan-id></vlan></vlans>
        </configuration></data></rpc-reply>"""
    )
    got = junos_parse(data, ["xe-0/0/1", "xe-0/0/2", "xe-0/0/3", "xe-0/0/9"])
    assert got == {
        "xe-0/0/1": P.trunk("xe-0/0/1", {5, 100, 200, 201, 202}, native=5),
        "xe-0/0/2": P.access("xe-0/0/2", 300),
        "xe-0/0/3": P("xe-0/0/3"),
    }


def test_both_drivers_registered() -> None:
    assert driver_class("openconfig") is OpenConfigDriver
    assert driver_class("junos") is JunosDriver
    for cls in (OpenConfigDriver, JunosDriver):
        assert cls.transport == "netconf"
        assert {
            "trunk",
            "access",
            "native-vlan",
            "confirmed-commit",
            "candidate",
        } <= cls.capabilities


# -- injection: refused before any session -----------------------------------------------------
@pytest.mark.parametrize("evil", INJECTIONS)
@pytest.mark.parametrize("cls", [OpenConfigDriver, JunosDriver])
def test_injection_refused_before_any_session(cls: type, evil: str) -> None:
    drv = cls(params(driver=cls.name), session=NetconfSession(params(), connect_fn=no_session))
    with pytest.raises(ValidationError):
        drv.read([evil])
    with pytest.raises(ValidationError):
        drv.converge({evil: P.trunk(evil, {100})})
    with pytest.raises(ValidationError):
        P.trunk("Ethernet1/1", {evil})  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        P.access("Ethernet1/1", evil)  # type: ignore[arg-type]
    # Defence in depth: PortConfigs whose checks were bypassed are still refused by render().
    before, after = P("Ethernet1/1"), P.trunk("Ethernet1/1", {100})
    for pc in (before, after):
        object.__setattr__(pc, "port", evil)
    with pytest.raises(ValidationError):
        drv.render([PortChange(before, after)])
    for field, value in (("trunk_vlans", frozenset({evil})), ("native_vlan", evil)):
        sneaky = P.trunk("Ethernet1/1", {100})
        object.__setattr__(sneaky, field, value)
        with pytest.raises(ValidationError):
            drv.render([PortChange(P("Ethernet1/1"), sneaky)])


# -- junos transaction against a recording stand-in --------------------------------------------
def rpc_error(tag: str, message: str = "boom") -> RPCError:
    return RPCError(
        etree.fromstring(
            f'<rpc-error xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><error-type>protocol'
            f"</error-type><error-tag>{tag}</error-tag><error-severity>error</error-severity>"
            f"<error-message>{message}</error-message></rpc-error>"
        )
    )


class FakeReply:
    """Shaped like ncclient's NCElement for the junos handler (namespaces stripped)."""

    def __init__(self, doc: str) -> None:
        self.tostring = doc.encode()


class RecordingManager:
    def __init__(self, config: str, fail: dict[str, Exception] | None = None) -> None:
        self.server_capabilities = [CAP + "candidate:1.0", CAP + "confirmed-commit:1.0"]
        self.connected = True
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.config = config
        self.fail = fail or {}

    def __getattr__(self, op: str) -> Callable[..., Any]:
        def call(**kw: Any) -> Any:
            self.calls.append((op, kw))
            if op in self.fail:
                raise self.fail[op]
            if op == "get_config":
                return FakeReply(f"<rpc-reply><data>{self.config}</data></rpc-reply>")
            return None

        return call


def junos_config(members: list[int]) -> str:
    vlans = "".join(f"<members>{v}</members>" for v in members)
    return (
        "<configuration><interfaces><interface><name>xe-0/0/1</name><unit><name>0</name>"
        "<family><ethernet-switching><interface-mode>trunk</interface-mode>"
        f"<vlan>{vlans}</vlan></ethernet-switching></family></unit></interface></interfaces>"
        "</configuration>"
    )


def junos_driver(m: RecordingManager) -> JunosDriver:
    p = params(driver="junos", confirm_timeout=90)
    return JunosDriver(p, session=NetconfSession(p, {"name": "junos"}, connect_fn=lambda *a: m))


def test_junos_transaction_order() -> None:
    m = RecordingManager(junos_config([100, 200]))
    drv = junos_driver(m)
    cs = drv.render([PortChange(P.trunk("xe-0/0/1", {100}), P.trunk("xe-0/0/1", {100, 200}))])
    drv.apply(cs)
    ops = [(op, kw.get("target") or kw.get("action") or kw.get("timeout")) for op, kw in m.calls]
    assert ops == [
        ("lock", "candidate"),
        ("discard_changes", None),
        ("load_configuration", "replace"),
        ("commit", "120"),  # 90 s -> 2 minutes, Junos counts minutes
        ("get_config", None),
        ("commit", None),
        ("unlock", "candidate"),
    ]
    sent = m.calls[2][1]["config"]
    assert etree.tostring(sent).startswith(b"<interfaces><interface><name>xe-0/0/1</name>")
    assert m.calls[3][1]["confirmed"] is True and "confirmed" not in m.calls[5][1]


def test_junos_verify_failure_rolls_back() -> None:
    m = RecordingManager(junos_config([100]))  # the switch did not take VLAN 200
    drv = junos_driver(m)
    cs = drv.render([PortChange(P.trunk("xe-0/0/1", {100}), P.trunk("xe-0/0/1", {100, 200}))])
    with pytest.raises(VerifyError):
        drv.apply(cs)
    assert [op for op, _ in m.calls][-4:] == ["get_config", "rollback", "commit", "unlock"]
    assert m.calls[-3][1] == {"rollback": 1}


def test_junos_load_error_discards_and_unlocks() -> None:
    m = RecordingManager("", fail={"load_configuration": rpc_error("invalid-value")})
    drv = junos_driver(m)
    cs = drv.render([PortChange(P.trunk("xe-0/0/1", set()), P.trunk("xe-0/0/1", {100}))])
    with pytest.raises(CommandRejected, match="invalid-value"):
        drv.apply(cs)
    assert [op for op, _ in m.calls] == [
        "lock",
        "discard_changes",
        "load_configuration",
        "discard_changes",
        "unlock",
    ]


def test_junos_lock_denied_is_transient() -> None:
    m = RecordingManager(
        "", fail={"lock": rpc_error("lock-denied", "configuration database locked")}
    )
    drv = junos_driver(m)
    cs = drv.render([PortChange(P.trunk("xe-0/0/1", set()), P.trunk("xe-0/0/1", {100}))])
    with pytest.raises(LockDenied):
        drv.apply(cs)
    assert [op for op, _ in m.calls] == ["lock"]


# -- error classification ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "stage", "expected"),
    [
        (rpc_error("lock-denied"), "lock candidate", LockDenied),
        (rpc_error("in-use"), "commit", LockDenied),
        (rpc_error("invalid-value"), "edit-config", CommandRejected),
        (rpc_error("operation-failed"), "commit confirmed", CommitError),
        (SSHError("Negotiation failed"), "connect", ConnectError),
        (TimeoutExpiredError("late"), "commit", ConnectError),
        (OSError("Socket is closed"), "edit-config", ConnectError),
    ],
)
def test_classify(exc: Exception, stage: str, expected: type) -> None:
    err = classify(exc, stage, params())
    assert type(err) is expected
    assert err.args[0].startswith(f"tor1: {stage}")


class ProbeManager:
    """Answers the n-th get-config (netconfd sitting on a request that came with the hello)."""

    def __init__(self, answer_at: int, error: Exception | None = None) -> None:
        self.timeout: float = 30
        self.timeouts: list[float] = []
        self.answer_at, self.error = answer_at, error

    def get_config(self, **kw: Any) -> None:
        self.timeouts.append(self.timeout)
        if self.error is not None:
            raise self.error
        if len(self.timeouts) < self.answer_at:
            raise TimeoutExpiredError("no reply")


def testhello_probe_nudges_once_then_gives_up() -> None:
    p = params(command_timeout=7)
    for m, sent in (
        (ProbeManager(1), [0.5]),
        (ProbeManager(2), [0.5, 7]),
        (ProbeManager(1, rpc_error("invalid-value")), [0.5]),  # any answer will do
    ):
        hello_probe(m, p)
        assert m.timeouts == sent and m.timeout == 7
    with pytest.raises(TimeoutExpiredError):
        hello_probe(ProbeManager(3), p)


# -- against a real netconfd -------------------------------------------------------------------
RESET = (
    '<nc:config xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
    '<interfaces xmlns="http://openconfig.net/yang/interfaces">{}</interfaces></nc:config>'
)
RESET_PORT = (
    "<interface><name>{}</name>"
    '<ethernet xmlns="http://openconfig.net/yang/interfaces/ethernet" nc:operation="merge">'
    '<switched-vlan xmlns="http://openconfig.net/yang/vlan"><config nc:operation="remove"/>'
    "</switched-vlan></ethernet></interface>"
)


def reset(session: NetconfSession) -> None:
    session.edit(
        RESET.format("".join(RESET_PORT.format(p) for p in PORTS)), default_operation="none"
    )


def look(session: NetconfSession, *ports: str, source: str = "running") -> dict[str, PortConfig]:
    return oc_mod.parse_ports(session.get_config(oc_mod.read_filter(ports), source), ports)


@pytest.fixture
def switch(
    server: NetconfServer, admin: NetconfSession
) -> Iterator[Callable[..., OpenConfigDriver]]:
    """Drivers on a freshly reset switch (no switched-vlan config on any port)."""
    reset(admin)
    assert set(look(admin, *PORTS).values()) == {P(p) for p in PORTS}
    made: list[OpenConfigDriver] = []

    def make(**kw: Any) -> OpenConfigDriver:
        drv = OpenConfigDriver(server.params(**kw))
        made.append(drv)
        return drv

    yield make
    for drv in made:
        drv.close()


@needs_netconfd
def test_converge_add_remove_access_and_read_back(switch: Callable[..., OpenConfigDriver]) -> None:
    drv = switch()
    steps = [
        {
            "Ethernet1/1": P.trunk("Ethernet1/1", {100, 200}),
            "Ethernet1/2": P.trunk("Ethernet1/2", {100}),
        },
        {"Ethernet1/1": P.trunk("Ethernet1/1", {100, 200, 300}, native=5)},
        {"Ethernet1/1": P.trunk("Ethernet1/1", {300})},  # removes 100, 200 and the native VLAN
        {"Ethernet1/1": P.access("Ethernet1/1", 10)},
        {"Ethernet1/1": P.access("Ethernet1/1", 20)},
        {"Ethernet1/1": P.trunk("Ethernet1/1", {400})},
    ]
    for desired in steps:
        result = drv.converge(desired)
        assert result.committed and result.verified
        assert drv.read(sorted(desired)) == desired
    assert drv.read(["Ethernet1/2"]) == {"Ethernet1/2": P.trunk("Ethernet1/2", {100})}
    again = drv.converge({"Ethernet1/1": P.trunk("Ethernet1/1", {400})})
    assert not again.committed and again.changes == ()  # nothing to do: nothing sent


@needs_netconfd
def test_unknown_port_rejected_and_nothing_committed(
    switch: Callable[..., OpenConfigDriver], admin: NetconfSession
) -> None:
    drv = switch()
    with pytest.raises(CommandRejected, match=r"data-missing.*Ethernet9/9"):
        drv.converge(
            {
                "Ethernet1/3": P.trunk("Ethernet1/3", {100}),
                "Ethernet9/9": P.trunk("Ethernet9/9", {100}),
            }
        )
    assert look(admin, "Ethernet1/3") == {"Ethernet1/3": P("Ethernet1/3")}
    assert look(admin, "Ethernet1/3", source="candidate") == {"Ethernet1/3": P("Ethernet1/3")}
    # Locks were released and the candidate discarded: the next change goes through.
    drv.converge({"Ethernet1/3": P.trunk("Ethernet1/3", {100})})
    assert look(admin, "Ethernet1/3") == {"Ethernet1/3": P.trunk("Ethernet1/3", {100})}


@needs_netconfd
@pytest.mark.parametrize(
    ("datastore", "lock_running"), [("candidate", False), ("running", False), ("running", True)]
)
def test_lock_held_by_another_session_is_lock_denied(
    switch: Callable[..., OpenConfigDriver],
    admin: NetconfSession,
    datastore: str,
    lock_running: bool,
) -> None:
    """A held running lock fails our commit (in-use) or, with lock_running, our own lock."""
    drv = switch(options={"lock_running": lock_running})
    admin.call("lock", "lock", target=datastore)
    try:
        with pytest.raises(LockDenied):
            drv.converge({"Ethernet1/4": P.trunk("Ethernet1/4", {100})})
    finally:
        admin.call("unlock", "unlock", target=datastore)
    assert look(admin, "Ethernet1/4") == {"Ethernet1/4": P("Ethernet1/4")}
    drv.converge({"Ethernet1/4": P.trunk("Ethernet1/4", {100})})  # same driver, lock now free


@needs_netconfd
def test_session_dropped_before_confirm_is_rolled_back_by_the_server(
    switch: Callable[..., OpenConfigDriver], admin: NetconfSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    drv = switch(confirm_timeout=2)
    drv.converge({"Ethernet1/5": P.trunk("Ethernet1/5", {100})})
    dropped_at: list[float] = []

    def read_back_then_drop(driver: OpenConfigDriver, changeset: Changeset) -> None:
        assert look(admin, "Ethernet1/5")["Ethernet1/5"].trunk_vlans == {100, 200}  # committed...
        driver.session.manager()._session._transport.close()  # ...and the session drops
        dropped_at.append(time.monotonic())

    monkeypatch.setattr(oc_mod, "verify_read_back", read_back_then_drop)
    with pytest.raises(ConnectError):
        drv.converge({"Ethernet1/5": P.trunk("Ethernet1/5", {100, 200})})
    # persist: the change outlives the session until the confirm timeout, then the server undoes it
    assert look(admin, "Ethernet1/5")["Ethernet1/5"].trunk_vlans == {100, 200}
    # netconfd runs its timers only after ~1 s without any request (its select() timed out), so
    # the test stays quiet while it waits: a client polling faster would postpone the rollback.
    time.sleep(2 + 1.5)
    for _attempt in range(3):
        if look(admin, "Ethernet1/5")["Ethernet1/5"].trunk_vlans == {100}:
            break
        time.sleep(1.5)
    else:
        raise AssertionError("the server did not roll back the unconfirmed commit")
    monkeypatch.undo()
    drv.converge({"Ethernet1/5": P.trunk("Ethernet1/5", {100, 300})})  # reconnects, stale id gone
    assert look(admin, "Ethernet1/5")["Ethernet1/5"].trunk_vlans == {100, 300}


@needs_netconfd
def test_next_transaction_cancels_a_lost_sessions_confirmed_commit(
    switch: Callable[..., OpenConfigDriver], admin: NetconfSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    drv = switch(confirm_timeout=60)

    def drop(driver: OpenConfigDriver, changeset: Changeset) -> None:
        driver.session.manager()._session._transport.close()

    monkeypatch.setattr(oc_mod, "verify_read_back", drop)
    with pytest.raises(ConnectError):
        drv.converge({"Ethernet1/6": P.trunk("Ethernet1/6", {100})})
    monkeypatch.undo()
    with pytest.raises(LockDenied):  # another client must wait for the pending commit...
        OpenConfigDriver(drv.params, session=admin).converge(
            {"Ethernet1/7": P.access("Ethernet1/7", 9)}
        )
    start = time.monotonic()
    drv.converge({"Ethernet1/6": P.trunk("Ethernet1/6", {200})})  # ...we cancel it, not wait 60 s
    assert time.monotonic() - start < 5
    assert look(admin, "Ethernet1/6") == {"Ethernet1/6": P.trunk("Ethernet1/6", {200})}


@needs_netconfd
@pytest.mark.parametrize("lock_running", [False, True])
def test_failed_read_back_rolls_back_at_once(
    switch: Callable[..., OpenConfigDriver],
    admin: NetconfSession,
    monkeypatch: pytest.MonkeyPatch,
    lock_running: bool,
) -> None:
    drv = switch(confirm_timeout=60, options={"lock_running": lock_running})
    real_read = drv.read
    monkeypatch.setattr(drv, "read", lambda ports: {p: P(p) for p in ports})  # "wrong" read back
    with pytest.raises(VerifyError):
        drv.apply(drv.render([PortChange(P("Ethernet1/8"), P.trunk("Ethernet1/8", {100}))]))
    assert real_read(["Ethernet1/8"]) == {"Ethernet1/8": P("Ethernet1/8")}  # cancel-commit, now
    reset(admin)  # and nothing is pending: a plain transaction goes through


@needs_netconfd
def test_reconnects_when_the_session_died(switch: Callable[..., OpenConfigDriver]) -> None:
    drv = switch()
    drv.converge({"Ethernet1/1": P.trunk("Ethernet1/1", {100})})
    first = drv.session.manager()
    first._session._transport.close()
    drv.converge({"Ethernet1/1": P.trunk("Ethernet1/1", {100, 200})})
    assert drv.session.manager() is not first
    assert drv.read(["Ethernet1/1"])["Ethernet1/1"].trunk_vlans == {100, 200}


@needs_netconfd
def test_fast_io_is_per_session(switch: Callable[..., OpenConfigDriver]) -> None:
    """Our sessions skip ncclient's TICK without touching the module global other users share."""
    drv = switch()
    times = []
    for vlans in ({100}, {100, 200}, {100}, {100, 200}, {100}):
        start = time.perf_counter()
        drv.converge({"Ethernet1/2": P.trunk("Ethernet1/2", vlans)})
        times.append(time.perf_counter() - start)
    assert ncclient.transport.session.TICK == 0.1
    assert sorted(times)[2] < 1.0  # a dozen RPCs; at 100 ms each this would be > 1 s


@needs_netconfd
def test_host_key_mismatch_unknown_host_and_bad_login(
    server: NetconfServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cases = {
        "mismatch": server.params(known_hosts=server.wrong_known_hosts),
        "unknown": server.params(known_hosts=str(empty)),
        "missing file": server.params(known_hosts=str(tmp_path / "nope")),
        "bad key": server.params(key_file=str(server.root / "ssh/other_host_key")),
        "refused": server.params(port=free_port()),
    }
    for what, p in cases.items():
        drv = OpenConfigDriver(p)
        with pytest.raises(ConnectError, match="tor1"):
            drv.read(["Ethernet1/1"])
        assert not drv.session.alive, what
    # A device handler that would accept unknown keys (ncclient's iosxe) does not get its way.
    with pytest.raises(ConnectError):
        NetconfSession(cases["mismatch"], {"name": "iosxe"}).manager()
    # Checking off is the only way past a wrong key.
    drv = OpenConfigDriver(
        server.params(known_hosts=server.wrong_known_hosts, host_key_checking=False)
    )
    try:
        assert "Ethernet1/1" in drv.read(["Ethernet1/1"])
    finally:
        drv.close()


@needs_netconfd
def test_running_and_startup_mode() -> None:
    with running_server("running") as srv:
        drv = OpenConfigDriver(srv.params())
        try:
            caps = drv.session.caps
            assert not caps.candidate and caps.writable_running and caps.startup
            drv.converge({"Ethernet1/1": P.trunk("Ethernet1/1", {100, 200})})
            drv.converge({"Ethernet1/1": P.trunk("Ethernet1/1", {200})})
            want = {"Ethernet1/1": P.trunk("Ethernet1/1", {200})}
            assert drv.read(["Ethernet1/1"]) == want
            assert look(drv.session, "Ethernet1/1", source="startup") == want  # copy-config ran
            with pytest.raises(CommandRejected):
                drv.converge({"Ethernet9/9": P.access("Ethernet9/9", 5)})
        finally:
            drv.close()
