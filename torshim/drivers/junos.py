"""Juniper EX/QFX (ELS) over NETCONF with ncclient's junos device handler.

Junos XML: `interfaces/interface[name]/unit 0/family/ethernet-switching` with `interface-mode`
(trunk|access) and `vlan/members` (VLAN IDs), and the trunk's `native-vlan-id` on the interface.
Changes go in one `<load-configuration action="replace">`: additions merge, `delete="delete"`
removes a native VLAN or the whole ethernet-switching block, and anything else that removes or
changes the mode replaces `ethernet-switching` (`replace="replace"`) with the complete desired
state (as the openconfig driver does, for the same reasons).

Transaction: lock candidate, discard-changes, load-configuration, `commit-configuration
confirmed` (Junos counts the timeout in minutes: ceil(confirm_timeout / 60), at least 1), read
back, plain commit to confirm, unlock. On failure before the commit: discard-changes. After the
confirmed commit: `rollback 1` + commit (Junos' way to undo it at once); if the session is gone,
Junos rolls back by itself at the timeout.

What is tested, honestly: the rendered XML (golden tests), the parsing of a get-config reply shaped
like Junos' (with its namespaces, and without them as ncclient's junos handler returns it), and the
order of the RPCs against a recording stand-in for ncclient's Manager. Nothing here has run against
a real Junos device or a vQFX: no Junos NETCONF server is available to the test bed, so the
element names, `replace`/`delete` attributes and error texts are from Juniper's documentation.

Limits: VLAN members given by name are mapped to IDs through `<vlans>` on read; the VLANs
themselves must exist (`vlans { vNNN { vlan-id NNN; } }`), Junos refuses members it cannot resolve
at commit. On ELS the native VLAN must also be a member; the shim leaves that to the desired state.
Junos accepts configuration for interfaces that are not (yet) present: guard rails must bound the
ports, the switch will not reject unknown names the way netconfd does.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from contextlib import suppress
from typing import ClassVar, Literal

from lxml import etree

from torshim import validate
from torshim.drivers.base import register
from torshim.drivers.netconf_driver import NetconfDriver
from torshim.errors import ShimError, UnsupportedError
from torshim.model import Changeset, PortChange, PortConfig
from torshim.netconf import verify_read_back

log = logging.getLogger(__name__)

DEVICE_PARAMS = {"name": "junos"}
RANGE_RE = re.compile(r"^([0-9]{1,4})-([0-9]{1,4})$")


def _sub(parent: etree._Element, tag: str, text: object = None) -> etree._Element:
    el = etree.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _switching(unit_family: etree._Element, want: PortConfig) -> etree._Element:
    es = _sub(unit_family, "ethernet-switching")
    if want.mode is not None:
        _sub(es, "interface-mode", want.mode)
    members = (
        sorted(validate.vlans(want.trunk_vlans))
        if want.mode == "trunk"
        else [validate.vlan(want.access_vlan)]
        if want.mode == "access" and want.access_vlan is not None
        else []
    )
    if members:
        vlan = _sub(es, "vlan")
        for v in members:
            _sub(vlan, "members", v)
    return es


def junos_kind(change: PortChange) -> Literal["merge", "replace", "remove"]:
    before, after = change.before, change.after
    if after.mode is None:
        return "remove"
    if before.mode != after.mode or change.removed_vlans:
        return "replace"
    if after.mode == "access" and before.access_vlan != after.access_vlan:
        return "replace" if before.access_vlan is not None else "merge"
    return "merge"


def render_configuration(changes: Sequence[PortChange]) -> str:
    """The `<configuration>` document ("" when there is nothing to change)."""
    root = etree.Element("configuration")
    interfaces = _sub(root, "interfaces")
    for change in changes:
        if change.empty:
            continue
        before, after = change.before, change.after
        iface = _sub(interfaces, "interface")
        _sub(iface, "name", validate.interface(change.port))
        if after.mode == "trunk" and after.native_vlan is not None:
            if after.native_vlan != before.native_vlan or before.mode != "trunk":
                _sub(iface, "native-vlan-id", validate.vlan(after.native_vlan))
        elif before.native_vlan is not None:
            _sub(iface, "native-vlan-id").set("delete", "delete")
        unit = _sub(iface, "unit")
        _sub(unit, "name", 0)
        family = _sub(unit, "family")
        kind = junos_kind(change)
        if kind == "remove":
            _sub(family, "ethernet-switching").set("delete", "delete")
        elif kind == "replace":
            _switching(family, after).set("replace", "replace")
        else:
            added = PortConfig(
                after.port,
                after.mode,
                after.access_vlan if before.access_vlan is None else None,
                None,
                change.added_vlans,
            )
            es = _switching(family, added)
            es.remove(es[0])  # merge means same mode: the mode is already set, send additions
            if len(es) == 0:
                iface.remove(unit)
    if len(interfaces) == 0:
        return ""
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def read_filter(ports: Sequence[str]) -> etree._Element:
    root = etree.Element("configuration")
    interfaces = _sub(root, "interfaces")
    for port in ports:
        _sub(_sub(interfaces, "interface"), "name", validate.interface(port))
    _sub(root, "vlans")
    return root


def _local(el: etree._Element, path: str) -> list[etree._Element]:
    """Namespace-agnostic child lookup: 'a/b' -> ./*[local-name()='a']/*[local-name()='b']."""
    expr = "/".join(f"*[local-name()='{step}']" for step in path.split("/"))
    return el.xpath(expr)


def _text(el: etree._Element, path: str) -> str | None:
    found = _local(el, path)
    return (found[0].text or "").strip() if found else None


def parse_ports(data: etree._Element, ports: Sequence[str]) -> dict[str, PortConfig]:
    configs = data.xpath("descendant-or-self::*[local-name()='configuration']")
    if not configs:
        return {}
    conf = configs[0]
    by_name = {
        _text(v, "name"): int(_text(v, "vlan-id") or 0)
        for v in _local(conf, "vlans/vlan")
        if (_text(v, "vlan-id") or "").isdigit()
    }
    out: dict[str, PortConfig] = {}
    for iface in _local(conf, "interfaces/interface"):
        name = _text(iface, "name") or ""
        if name not in ports:
            continue
        native = _text(iface, "native-vlan-id")
        es = next(
            (
                e
                for unit in _local(iface, "unit")
                if _text(unit, "name") == "0"
                for e in _local(unit, "family/ethernet-switching")
            ),
            None,
        )
        if es is None:
            out[name] = PortConfig(name)
            continue
        mode = _text(es, "interface-mode") or None
        if mode not in (None, "trunk", "access"):
            raise UnsupportedError(f"{name}: interface-mode {mode!r} is not modelled")
        vlans: set[int] = set()
        for member in _local(es, "vlan/members"):
            text = (member.text or "").strip()
            m = RANGE_RE.match(text)
            if m:
                vlans.update(range(validate.vlan(m.group(1)), validate.vlan(m.group(2)) + 1))
            elif text.isdigit():
                vlans.add(validate.vlan(text))
            elif text in by_name:
                vlans.add(validate.vlan(by_name[text]))
            else:
                raise UnsupportedError(f"{name}: VLAN member {text!r} cannot be mapped to an ID")
        if mode == "access":
            if len(vlans) > 1:
                raise UnsupportedError(f"{name}: access port with several VLANs {sorted(vlans)}")
            out[name] = PortConfig.access(name, next(iter(vlans), None))
        else:
            out[name] = PortConfig(
                name, mode, None, validate.vlan(native) if native else None, frozenset(vlans)
            )  # type: ignore[arg-type]
    return out


@register
class JunosDriver(NetconfDriver):
    name: ClassVar[str] = "junos"
    device_params = DEVICE_PARAMS
    render_xml = staticmethod(render_configuration)
    read_filter = staticmethod(read_filter)
    parse_ports = staticmethod(parse_ports)

    def commit(self, changeset: Changeset) -> None:
        s = self.session
        parser = etree.XMLParser(remove_blank_text=True)
        interfaces = etree.fromstring(changeset.xml.encode(), parser)[0]
        seconds = 60 * max(1, math.ceil(self.params.confirm_timeout / 60))  # Junos: whole minutes
        with s.locked("candidate"):
            try:
                s.call("discard-changes", "discard_changes")
                s.call("load-configuration", "load_configuration", action="replace",
                       format="xml", config=interfaces)  # fmt: skip
                s.call("commit confirmed", "commit", confirmed=True, timeout=str(seconds))
            except ShimError:
                with suppress(ShimError):
                    if s.alive:
                        s.call("discard-changes", "discard_changes")
                raise
            try:
                verify_read_back(self, changeset)
                s.call("confirm commit", "commit")
            except BaseException:
                self._undo()
                raise

    def _undo(self) -> None:
        """Undo the unconfirmed commit now; without a session Junos does it at the timeout."""
        s = self.session
        try:
            if s.alive:
                s.call("rollback 1", "rollback", rollback=1)
                s.call("commit rollback", "commit")
        except ShimError as e:
            log.warning("%s: %s; Junos rolls back at the confirm timeout", self.params.name, e)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
