"""What a lab is made of, as plain data: pure, no I/O except reading a spec file.

Every name derives from the prefix, so two labs with different prefixes never collide:

    <prefix>-node   the node's network namespace (VF netdevs, named as in the fake sysfs)
    <prefix>-tor    the TOR's network namespace (ports swpN, bridges, mgmt0, sshd)
    <prefix>-mg     the host end of the management veth (its peer is mgmt0 in the TOR netns)
    <prefix>-sw     the TOR's login user (Linux TOR)
    <prefix>-nc     the NETCONF user of the netconf TOR (netconfd's superuser)
    <prefix>-pod-<namespace>.<name>   the netns of a pod on the node (made by later steps)
    <state root>/<prefix>/   the state dir: fake sysfs, keys, sshd files, torshim config, state
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import yaml

from nicinventory.catalog import MODELS
from nicinventory.fakesysfs import vf_address
from nicinventory.model import PCI_ADDRESS_RE

DEFAULT_PREFIX = "nsmlab"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")  # 10 chars: `<prefix>-node` etc. stay short
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # Linux: at most 15 bytes
STATE_ROOT_ENV = "NSM_LAB_STATE_ROOT"
DEFAULT_STATE_ROOT = "/run/nsm-lab"
MAX_VFS = 64  # a lab, not a host: more VFs than this is a typo
# TOR flavours: `linux` (bridges administered over SSH with `ip`) and `netconf` (netconfd with the
# OpenConfig modules; an agent applies its committed switched-vlan config to the bridges).
SWITCHES = ("linux", "netconf")
TORSHIM_DRIVER = {"linux": "linux", "netconf": "openconfig"}  # flavour -> torshim driver

# The bundled lab: one node with two PFs of different capabilities, cabled to one Linux TOR.
# Each VF netdev is a veth end in the node netns; its peer is TOR port swpN (numbered in order).
DEFAULT_SPEC = """\
node: node-a
pfs:
  - {model: e810, pci_address: "0000:3b:00.0", ifname: ens1f0, vfs: 4}   # Intel E810-C 100G
  - {model: x710, pci_address: "0000:5e:00.0", ifname: ens2f0, vfs: 2}   # Intel X710 10G
"""


class SpecError(ValueError):
    """A bad lab spec or prefix; the message is one line."""


@dataclass(frozen=True)
class VF:
    index: int
    pci_address: str
    netdev: str  # its name in the node netns and in the fake sysfs
    tor_port: str  # its veth peer in the TOR netns
    mac: str


@dataclass(frozen=True)
class PF:
    model: str
    model_name: str
    speed_mbps: int
    pci_address: str
    ifname: str
    vfs: tuple[VF, ...]


@dataclass(frozen=True)
class Lab:
    prefix: str
    node_name: str
    node_ns: str
    tor_ns: str
    tor_name: str
    mgmt_host_if: str
    mgmt_tor_if: str
    tor_user: str
    state_dir: str
    pfs: tuple[PF, ...] = field(default_factory=tuple)
    switch: str = "linux"  # the TOR flavour, one of SWITCHES

    @property
    def netconf_user(self) -> str:
        return f"{self.prefix}-nc"

    @property
    def pod_ns_prefix(self) -> str:
        """Pods get netns `<prefix>-pod-<namespace>.<name>`: destroy removes all of them."""
        return f"{self.prefix}-pod-"

    @property
    def torshim_driver(self) -> str:
        return TORSHIM_DRIVER[self.switch]

    @property
    def vfs(self) -> list[VF]:
        return [vf for pf in self.pfs for vf in pf.vfs]

    @property
    def sysfs(self) -> str:
        return os.path.join(self.state_dir, "sys")

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "state.json")

    @property
    def torshim_config(self) -> str:
        return os.path.join(self.state_dir, "torshim.yaml")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_root() -> str:
    return os.environ.get(STATE_ROOT_ENV) or DEFAULT_STATE_ROOT


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
        raise SpecError(
            f"invalid prefix {prefix!r}: 1-10 lower-case letters and digits, starting with a letter"
        )
    return prefix


def check_ifname(name: str, what: str) -> str:
    if not IFNAME_RE.match(name):
        raise SpecError(f"{what}: {name!r} is not a Linux interface name (1-15 chars)")
    return name


def _vf_mac(pci_address: str) -> str:
    """A locally administered MAC derived from the VF's PCI address (stable across runs)."""
    dom, bus, devfn = pci_address.split(":")
    dev, fn = devfn.split(".")
    raw = [0x02, int(dom, 16) & 0xFF, int(bus, 16), int(dev, 16), int(fn), 0x01]
    return ":".join(f"{b:02x}" for b in raw)


def load_spec(path: str | None = None) -> dict[str, Any]:
    """A lab spec from a YAML file, or the bundled default."""
    try:
        if path is None:
            text = DEFAULT_SPEC
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise SpecError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path or 'spec'}: a mapping with `pfs` is expected")
    return data


def check_switch(switch: str) -> str:
    if switch not in SWITCHES:
        raise SpecError(f"invalid switch {switch!r}: one of {', '.join(SWITCHES)}")
    return switch


def build_topology(
    spec: dict[str, Any],
    prefix: str = DEFAULT_PREFIX,
    root: str | None = None,
    switch: str = "linux",
) -> Lab:
    """The lab a spec describes, every name checked (interface names fit in 15 chars)."""
    check_prefix(prefix)
    check_switch(switch)
    unknown = set(spec) - {"node", "pfs"}
    if unknown:
        raise SpecError(f"spec: unknown key {sorted(unknown)[0]!r} (known: node, pfs)")
    node_name = str(spec.get("node", "node-a"))
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?", node_name):
        raise SpecError(f"spec: node: {node_name!r} is not a host name")
    raw_pfs = spec.get("pfs")
    if not isinstance(raw_pfs, list) or not raw_pfs:
        raise SpecError("spec: pfs: a non-empty list is expected")
    pfs: list[PF] = []
    port = 0
    seen_pci: set[str] = set()
    seen_if: set[str] = set()
    for i, raw in enumerate(raw_pfs):
        where = f"spec: pfs.{i}"
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: a mapping is expected")
        extra = set(raw) - {"model", "pci_address", "ifname", "vfs"}
        if extra:
            raise SpecError(f"{where}: unknown key {sorted(extra)[0]!r}")
        model = MODELS.get(str(raw.get("model")))
        if model is None:
            raise SpecError(
                f"{where}.model: {raw.get('model')!r} unknown; known: {', '.join(sorted(MODELS))}"
            )
        pci = str(raw.get("pci_address", "")).lower()
        if not PCI_ADDRESS_RE.match(pci):
            raise SpecError(f"{where}.pci_address: {pci!r} is not like 0000:3b:00.0")
        ifname = check_ifname(str(raw.get("ifname", "")), f"{where}.ifname")
        n = raw.get("vfs")
        if (
            isinstance(n, bool)
            or not isinstance(n, int)
            or not 1 <= n <= min(MAX_VFS, model.total_vfs)
        ):
            raise SpecError(f"{where}.vfs: a VF count in 1..{min(MAX_VFS, model.total_vfs)}")
        # The fake sysfs builder's default layout: VF offset 16 + fn * (total - 1), stride 1.
        fn = int(pci.rsplit(".", 1)[1])
        offset = 16 + fn * (model.total_vfs - 1)
        vfs = []
        for k in range(n):
            port += 1
            addr = vf_address(pci, k, offset)
            netdev = check_ifname(f"{ifname}v{k}", f"{where}: VF {k} netdev")
            vfs.append(VF(k, addr, netdev, f"swp{port}", _vf_mac(addr)))
        for name in (ifname, *(vf.netdev for vf in vfs)):
            if name in seen_if:
                raise SpecError(f"{where}: interface name {name!r} used twice")
            seen_if.add(name)
        for addr in (pci, *(vf.pci_address for vf in vfs)):
            if addr in seen_pci:
                raise SpecError(f"{where}: PCI address {addr} used twice")
            seen_pci.add(addr)
        pfs.append(PF(model.key, model.name, model.speed_mbps, pci, ifname, tuple(vfs)))
    lab = replace(names_for(prefix, root), node_name=node_name, pfs=tuple(pfs), switch=switch)
    check_ifname(lab.mgmt_host_if, "management link")
    return lab


def names_for(prefix: str, root: str | None = None) -> Lab:
    """A lab with no PFs: just the prefix-derived names, for cleaning up without a spec."""
    check_prefix(prefix)
    return Lab(
        prefix=prefix,
        node_name="",
        node_ns=f"{prefix}-node",
        tor_ns=f"{prefix}-tor",
        tor_name=f"{prefix}-tor",
        mgmt_host_if=f"{prefix}-mg",
        mgmt_tor_if="mgmt0",
        tor_user=f"{prefix}-sw",
        state_dir=os.path.join(root or state_root(), prefix),
    )


def lab_from_dict(data: dict[str, Any]) -> Lab:
    """The Lab a state file recorded (`Lab.to_dict()`), for commands run after `up`."""
    pfs = tuple(
        PF(**{**pf, "vfs": tuple(VF(**vf) for vf in pf["vfs"])}) for pf in data.get("pfs", ())
    )
    return Lab(**{**data, "pfs": pfs})
