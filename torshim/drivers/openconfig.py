"""OpenConfig switches over NETCONF: openconfig-interfaces + openconfig-vlan `switched-vlan`.

What is sent (tested against Debian's netconfd loading the OpenConfig modules, tests/torshim):

- one `<config>` for all changed ports, sent with `<default-operation>none</default-operation>`:
  an `<interface>` the switch does not have is then `data-missing` (CommandRejected) instead of
  being created; `<ethernet nc:operation="merge">` creates the Ethernet/VLAN containers if needed;
- same mode, only additions (trunk VLANs added, native or access VLAN set): merge of those leaves;
- anything that removes (a trunk VLAN, the native VLAN, the access VLAN) or changes the mode:
  `switched-vlan/config nc:operation="replace"` holding the port's complete desired state. netconfd
  also accepts `nc:operation="remove"` on single `trunk-vlans` entries (`delete` fails with
  data-missing when the entry is already gone), but a per-entry remove cannot take a VLAN out of a
  range entry ("100..200") and leaves whatever else is on the port: replace does both, is
  idempotent, and is what "stale VLANs after unplug" needs. Replacing also drops the leaves whose
  `when` no longer holds (netconfd prunes them itself, other servers may refuse them);
- mode None (not managed): `switched-vlan/config nc:operation="remove"`.

Read: `<get-config>` of running with a subtree filter naming the asked ports; ports the switch does
not have are absent from the result. `trunk-vlans` ranges "a..b" are expanded.

Caveat: in OpenConfig a TRUNK port without `trunk-vlans` carries *all* VLANs; the shim's released
trunk (no VLANs) is rendered that way. Switches that follow the model literally then pass every
VLAN on a released PF port: release to access mode (or a dedicated parking VLAN) where that matters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar, Literal

from lxml import etree

from torshim import validate
from torshim.drivers.base import register
from torshim.drivers.netconf_driver import NetconfDriver
from torshim.errors import UnsupportedError
from torshim.model import Changeset, PortChange, PortConfig
from torshim.netconf import verify_read_back

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
OC_IF = "http://openconfig.net/yang/interfaces"
OC_ETH = "http://openconfig.net/yang/interfaces/ethernet"
OC_VLAN = "http://openconfig.net/yang/vlan"
NC_OP = f"{{{NC}}}operation"
RANGE_RE = re.compile(r"^([0-9]{1,4})\.\.([0-9]{1,4})$")


def _sub(parent: etree._Element, ns: str, tag: str, text: object = None) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{tag}", nsmap=None if ns == _ns(parent) else {None: ns})
    if text is not None:
        el.text = str(text)
    return el


def _ns(el: etree._Element) -> str:
    return etree.QName(el).namespace or ""


def _full_config(parent: etree._Element, want: PortConfig) -> None:
    """The port's complete switched-vlan config, in YANG order."""
    if want.mode is not None:
        _sub(parent, OC_VLAN, "interface-mode", want.mode.upper())
    if want.mode == "trunk":
        if want.native_vlan is not None:
            _sub(parent, OC_VLAN, "native-vlan", validate.vlan(want.native_vlan))
        for v in sorted(validate.vlans(want.trunk_vlans)):
            _sub(parent, OC_VLAN, "trunk-vlans", v)
    elif want.mode == "access" and want.access_vlan is not None:
        _sub(parent, OC_VLAN, "access-vlan", validate.vlan(want.access_vlan))


def plan_kind(change: PortChange) -> Literal["merge", "replace", "remove"]:
    """How a change is expressed (see the module docstring)."""
    before, after = change.before, change.after
    if after.mode is None:
        return "remove"
    if before.mode != after.mode or change.removed_vlans:
        return "replace"
    if before.native_vlan is not None and after.native_vlan != before.native_vlan:
        return "replace" if after.native_vlan is None else "merge"
    if before.access_vlan is not None and after.access_vlan is None:
        return "replace"
    return "merge"


def render_config(changes: Sequence[PortChange]) -> str:
    """The `<config>` document for these changes ("" when there is nothing to change)."""
    root = etree.Element(f"{{{NC}}}config", nsmap={"nc": NC})
    interfaces = _sub(root, OC_IF, "interfaces")
    for change in changes:
        if change.empty:
            continue
        validate.interface(change.port)  # defence in depth: PortConfig checked it already
        iface = _sub(interfaces, OC_IF, "interface")
        _sub(iface, OC_IF, "name", change.port)
        eth = _sub(iface, OC_ETH, "ethernet")
        eth.set(NC_OP, "merge")
        config = _sub(_sub(eth, OC_VLAN, "switched-vlan"), OC_VLAN, "config")
        kind = plan_kind(change)
        if kind != "merge":
            config.set(NC_OP, kind)
            if kind == "replace":
                _full_config(config, change.after)
            continue
        after, before = change.after, change.before
        if after.mode == "trunk":
            if after.native_vlan is not None and after.native_vlan != before.native_vlan:
                _sub(config, OC_VLAN, "native-vlan", validate.vlan(after.native_vlan))
            for v in sorted(validate.vlans(change.added_vlans)):
                _sub(config, OC_VLAN, "trunk-vlans", v)
        elif after.access_vlan is not None:
            _sub(config, OC_VLAN, "access-vlan", validate.vlan(after.access_vlan))
    if len(interfaces) == 0:
        return ""
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def read_filter(ports: Sequence[str]) -> etree._Element:
    interfaces = etree.Element(f"{{{OC_IF}}}interfaces", nsmap={None: OC_IF})
    for port in ports:
        iface = _sub(interfaces, OC_IF, "interface")
        _sub(iface, OC_IF, "name", validate.interface(port))
        _sub(_sub(iface, OC_ETH, "ethernet"), OC_VLAN, "switched-vlan")
    return interfaces


def _vlan_entries(texts: Sequence[str]) -> frozenset[int]:
    out: set[int] = set()
    for text in texts:
        m = RANGE_RE.match(text.strip())
        if m:
            lo, hi = validate.vlan(m.group(1)), validate.vlan(m.group(2))
            out.update(range(lo, hi + 1))
        else:
            out.add(validate.vlan(text.strip()))
    return frozenset(out)


def parse_ports(data: etree._Element, ports: Sequence[str]) -> dict[str, PortConfig]:
    """PortConfigs from a get-config `<data>`, for the asked ports the switch reported."""
    ns = {"if": OC_IF, "eth": OC_ETH, "vl": OC_VLAN}
    out: dict[str, PortConfig] = {}
    for iface in data.iterfind(".//if:interfaces/if:interface", ns):
        name = (iface.findtext("if:name", namespaces=ns) or "").strip()
        if name not in ports:
            continue
        cfg = iface.find("eth:ethernet/vl:switched-vlan/vl:config", ns)
        if cfg is None:
            out[name] = PortConfig(name)
            continue
        mode_text = (cfg.findtext("vl:interface-mode", namespaces=ns) or "").strip()
        mode = mode_text.rsplit(":", 1)[-1].lower() or None
        if mode not in (None, "trunk", "access"):
            raise UnsupportedError(f"{name}: interface-mode {mode_text!r} is not modelled")

        def leaf(tag: str, cfg: etree._Element = cfg) -> int | None:
            text = cfg.findtext(f"vl:{tag}", namespaces=ns)
            return validate.vlan(text.strip()) if text and text.strip() else None

        trunk = _vlan_entries([e.text or "" for e in cfg.iterfind("vl:trunk-vlans", ns)])
        out[name] = PortConfig(name, mode, leaf("access-vlan"), leaf("native-vlan"), trunk)  # type: ignore[arg-type]
    return out


@register
class OpenConfigDriver(NetconfDriver):
    name: ClassVar[str] = "openconfig"
    render_xml = staticmethod(render_config)
    read_filter = staticmethod(read_filter)
    parse_ports = staticmethod(parse_ports)

    def commit(self, changeset: Changeset) -> None:
        self.session.edit(
            changeset.xml,
            verify=lambda: verify_read_back(self, changeset),
            default_operation="none",
        )
