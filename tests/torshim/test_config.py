"""The shim's config: every rule and cross-check with its exact `file: field: reason`, secrets that
only ever come from files and never show, and the lookups (switch_params, port_for, service)."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import pytest
import yaml
from lxml import etree

from torshim import validate
from torshim.config import (
    DEFAULT_STORE,
    NotFoundError,
    ShimConfig,
    SwitchPort,
    load_config,
    normalise_pf,
    vlan_ranges,
)
from torshim.drivers import base
from torshim.drivers.base import SwitchDriver, SwitchParams, driver_names
from torshim.errors import ConfigError
from torshim.model import Changeset, PortChange, PortConfig

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-Hunter2"  # the password in every fixture: must never show anywhere

# -- stand-in drivers (the real ones are written elsewhere; the config must work with any) ---------


class DummyCli(SwitchDriver):
    """A test flavour that renders one CLI line per step."""

    name = "dummy-cli"
    transport = "cli"
    capabilities = frozenset({"trunk", "access", "native-vlan"})
    made: ClassVar[list[SwitchParams]] = []

    def __init__(self, params: SwitchParams) -> None:
        super().__init__(params)
        DummyCli.made.append(params)

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        lines: list[str] = []
        for ch in changes:
            a, b = ch.after, ch.before
            lines.append(f"interface {validate.interface(ch.port)}")
            if a.mode != b.mode:
                lines.append(f"mode {a.mode}")
            if a.mode == "access":
                lines.append(f"access vlan {a.access_vlan or 'default'}")
            lines += [f"vlan add {v}" for v in sorted(ch.added_vlans)]
            lines += [f"vlan remove {v}" for v in sorted(ch.removed_vlans)]
            if a.native_vlan != b.native_vlan:
                lines.append(f"native vlan {a.native_vlan}")
        return Changeset(self.name, tuple(changes), tuple(lines))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        raise AssertionError("no I/O: read() called")

    def apply(self, changeset: Changeset) -> None:
        raise AssertionError("no I/O: apply() called")


class DummyNetconf(DummyCli):
    """A test flavour that renders an XML document; trunks only."""

    name = "dummy-nc"
    transport = "netconf"
    capabilities = frozenset({"trunk"})

    def render(self, changes: Sequence[PortChange]) -> Changeset:
        root = etree.Element("config")
        for ch in changes:
            port = etree.SubElement(root, "port", name=validate.interface(ch.port))
            etree.SubElement(port, "trunk-vlans").text = " ".join(
                map(str, sorted(ch.after.trunk_vlans))
            )
        xml = etree.tostring(root, pretty_print=True).decode()
        return Changeset(self.name, tuple(changes), xml=xml)


DUMMIES: tuple[type[SwitchDriver], ...] = (DummyCli, DummyNetconf)


def register_dummies() -> None:
    """For subprocesses: make the stand-ins known for good."""
    for cls in DUMMIES:
        base.register(cls)


@pytest.fixture(autouse=True)
def dummy_drivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    driver_names()  # the real drivers register first, so the stand-ins never shadow them
    for cls in DUMMIES:
        monkeypatch.setitem(base._REGISTRY, cls.name, cls)
    DummyCli.made.clear()
    yield


# -- a valid config, and ways to break it --------------------------------------------------------


def secrets(tmp: Path) -> None:
    (tmp / "pw").write_text(SECRET + "\n")
    (tmp / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n")
    (tmp / "known_hosts").write_text("192.0.2.11 ssh-ed25519 AAAA\n")
    (tmp / "empty").write_text("\n")
    (tmp / "binary").write_bytes(b"\xff\xfe\x00")
    (tmp / "dir").mkdir(exist_ok=True)


BASE: dict[str, Any] = {
    "switches": [
        {"name": "tor-a", "driver": "dummy-nc", "host": "192.0.2.11", "username": "nsm",
         "password_file": "pw", "known_hosts": "known_hosts"},
        {"name": "tor-b", "driver": "dummy-cli", "host": "tor-b.lab.example.com", "port": 2222,
         "username": "nsm", "key_file": "id_ed25519", "options": {"global_delay_factor": 2}},
    ],
    "port_map": [
        {"node": "node-a", "pf": "ens1f0", "switch": "tor-a", "port": "Ethernet1/1"},
        {"node": "node-a", "pf": "0000:3b:00.1", "switch": "tor-a", "port": "Ethernet1/2"},
        {"node": "node-a", "pf": "ens3f0np0", "switch": "tor-b", "port": "swp1"},
        {"node": "node-b", "pf": "ens1f0", "switch": "tor-b", "port": "swp2"},
    ],
    "services": [
        {"name": "myns.example.com", "domain": "example.com", "vlan": 100, "mtu": 9000,
         "subnet": "10.100.0.0/24", "routes": [{"prefix": "10.0.0.0/8", "next_hop": "10.100.0.1"}],
         "dns": {"servers": ["10.100.0.53"], "search": ["example.com"]},
         "namespaces": ["default", "myns"]},
        {"name": "other.example.com", "domain": "example.com", "vlan": 200,
         "subnet": "fd00:200::/64", "routes": [{"prefix": "::/0", "next_hop": "fd00:200::1"}],
         "namespaces": ["*"]},
    ],
    "guard_rails": {
        "allowed_vlans": "100-199,200-249,300",
        "protected_ports": {"tor-a": ["Ethernet1/49", "mgmt0"], "tor-b": ["swp49"]},
    },
    "store": {"path": "state/torshim.db"},
}  # fmt: skip


def write(tmp: Path, data: Any, name: str = "torshim.yaml") -> str:
    secrets(tmp)
    path = tmp / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def edit(fn: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    fn(data)
    return data


@pytest.fixture
def cfg(tmp_path: Path) -> ShimConfig:
    return load_config(write(tmp_path, BASE))


def sw(i: int, **kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["switches"][i].update(kw)


def drop(section: str, i: int, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section][i].pop(key)


def pm(i: int, **kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["port_map"][i].update(kw)


def svc(i: int, **kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["services"][i].update(kw)


def rails(**kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["guard_rails"].update(kw)


def append(section: str, entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section].append(entry)


def both(*fns: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda d: [f(d) for f in fns]


S1 = {"name": "tor-a", "driver": "dummy-cli", "host": "h", "username": "u", "password_file": "pw"}
SV = {
    "name": "x",
    "domain": "example.com",
    "vlan": 150,
    "subnet": "10.1.0.0/24",
    "namespaces": ["a"],
}
PF_ERR = "(an interface name or a PCI address)"
IF_ERR = "invalid interface name"

# (id, change, "field: reason" ({tmp} is the config's folder))
RULES: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    # switches
    ("switch-name-missing", drop("switches", 0, "name"), "switches.0.name: Field required"),
    ("switch-name-bad", sw(0, name="Tor_A"),
     "switches.0.name: invalid switch name 'Tor_A' (lower case letters, digits, . and -)"),
    ("switch-name-dup", sw(1, name="tor-a"), "switches.1.name: 'tor-a' is already switches.0"),
    ("driver-missing", drop("switches", 0, "driver"), "switches.0.driver: Field required"),
    ("host-injection", sw(0, host="tor-a;reboot"), "switches.0.host: invalid host 'tor-a;reboot'"),
    ("host-option", sw(0, host="-oProxyCommand=x"), "switches.0.host: invalid host '-oProxyCommand=x'"),
    ("host-missing", drop("switches", 0, "host"), "switches.0.host: Field required"),
    ("port-zero", sw(0, port=0), "switches.0.port: Input should be greater than or equal to 1"),
    ("port-big", sw(0, port=65536), "switches.0.port: Input should be less than or equal to 65535"),
    ("username-space", sw(0, username="n sm"), "switches.0.username: invalid username 'n sm'"),
    ("username-missing", drop("switches", 0, "username"), "switches.0.username: Field required"),
    ("inline-password", sw(0, password=SECRET),
     "switches.0.password: secrets are read from files: use password_file or key_file"),
    ("inline-key", sw(1, key="AAAA"),
     "switches.1.key: secrets are read from files: use password_file or key_file"),
    ("no-auth", drop("switches", 0, "password_file"),
     "switches.0.password_file: give password_file or key_file"),
    ("password-file-missing", sw(0, password_file="nope"),
     "switches.0.password_file: cannot read {tmp}/nope: No such file or directory"),
    ("password-file-empty", sw(0, password_file="empty"), "switches.0.password_file: {tmp}/empty is empty"),
    ("password-file-dir", sw(0, password_file="dir"),
     "switches.0.password_file: cannot read {tmp}/dir: Is a directory"),
    ("password-file-binary", sw(0, password_file="binary"),
     "switches.0.password_file: {tmp}/binary is not UTF-8 text"),
    ("password-file-blank", sw(0, password_file=""), "switches.0.password_file: invalid path"),
    ("key-file-missing", sw(1, key_file="/nonexistent/key"),
     "switches.1.key_file: cannot read /nonexistent/key: No such file or directory"),
    ("known-hosts-missing", sw(0, known_hosts="kh"),
     "switches.0.known_hosts: cannot read {tmp}/kh: No such file or directory"),
    ("host-key-checking-word", sw(0, host_key_checking="maybe"),
     "switches.0.host_key_checking: Input should be a valid boolean, unable to interpret input"),
    ("connect-timeout-zero", sw(0, connect_timeout=0),
     "switches.0.connect_timeout: Input should be greater than 0"),
    ("command-timeout-negative", sw(0, command_timeout=-1),
     "switches.0.command_timeout: Input should be greater than 0"),
    ("confirm-timeout-zero", sw(0, confirm_timeout=0),
     "switches.0.confirm_timeout: Input should be greater than 0"),
    ("confirm-before-command", sw(0, confirm_timeout=30, command_timeout=30),
     "switches.0.confirm_timeout: must exceed command_timeout (30 s), or the switch rolls back "
     "before the shim can confirm"),
    ("max-sessions-zero", sw(0, max_sessions=0),
     "switches.0.max_sessions: Input should be greater than or equal to 1"),
    ("options-inline-secret", sw(1, options={"secret": "enable"}),
     "switches.1.options: 'secret': secrets are read from files, never inline"),
    ("options-inline-password", sw(1, options={"ssh_password": "x"}),
     "switches.1.options: 'ssh_password': secrets are read from files, never inline"),
    ("options-not-a-map", sw(1, options=["a"]), "switches.1.options: Input should be a valid dictionary"),
    ("switch-extra-key", sw(0, vlan=5), "switches.0.vlan: Extra inputs are not permitted"),
    ("switches-not-a-list", lambda d: d.update(switches={"tor-a": {}}),
     "switches: Input should be a valid list"),
    # port map
    ("node-bad", pm(0, node="Node_A"), "port_map.0.node: invalid node name 'Node_A'"),
    ("pf-injection", pm(0, pf="ens1f0;reboot"), f"port_map.0.pf: invalid PF 'ens1f0;reboot' {PF_ERR}"),
    ("pf-bad-pci", pm(0, pf="0000:3b:00.9"), f"port_map.0.pf: invalid PF '0000:3b:00.9' {PF_ERR}"),
    ("port-injection", pm(0, port="Ethernet1/1;reload"),
     f"port_map.0.port: {IF_ERR} 'Ethernet1/1;reload'"),
    ("port-newline", pm(0, port="Ethernet1/1\nreload"),
     f"port_map.0.port: {IF_ERR} 'Ethernet1/1\\nreload'"),
    ("port-xml", pm(0, port="Eth<x/>"), f"port_map.0.port: {IF_ERR} 'Eth<x/>'"),
    ("port-missing", drop("port_map", 0, "port"), "port_map.0.port: Field required"),
    ("port-map-extra", pm(0, vlan=5), "port_map.0.vlan: Extra inputs are not permitted"),
    ("port-map-unknown-switch", pm(2, switch="tor-z"), "port_map.2.switch: no switch named 'tor-z'"),
    ("port-map-protected", pm(0, port="Ethernet1/49"),
     "port_map.0.port: tor-a Ethernet1/49 is a protected port"),
    ("port-map-protected-any-case", pm(2, port="SWP49"),
     "port_map.2.port: tor-b SWP49 is a protected port"),
    ("port-map-pf-dup", pm(1, pf="ens1f0"), "port_map.1.pf: node-a ens1f0 is already port_map.0"),
    ("port-map-pci-dup-short-form", both(pm(0, pf="0000:3B:00.1"), pm(1, pf="3b:00.1")),
     "port_map.1.pf: node-a 0000:3b:00.1 is already port_map.0"),
    ("port-map-port-dup", pm(1, port="ethernet1/1"),
     "port_map.1.port: tor-a ethernet1/1 is already port_map.0"),
    # services
    ("service-name-bad", svc(0, name="My NS"),
     "services.0.name: invalid service name 'My NS' (lower case letters, digits, . and -)"),
    ("service-name-dup", svc(1, name="myns.example.com"),
     "services.1.name: 'myns.example.com' is already services.0"),
    ("domain-bad", svc(0, domain="example..com"), "services.0.domain: invalid domain 'example..com'"),
    ("domain-missing", drop("services", 0, "domain"), "services.0.domain: Field required"),
    ("vlan-zero", svc(0, vlan=0), "services.0.vlan: invalid VLAN ID 0 (1-4094)"),
    ("vlan-4095", svc(0, vlan=4095), "services.0.vlan: invalid VLAN ID 4095 (1-4094)"),
    ("vlan-bool", svc(0, vlan=True), "services.0.vlan: invalid VLAN ID True"),
    ("vlan-injection", svc(0, vlan="100; rm"), "services.0.vlan: invalid VLAN ID '100; rm' (1-4094)"),
    ("vlan-dup", svc(1, vlan=100), "services.1.vlan: VLAN 100 is already services.0"),
    ("vlan-not-allowed", svc(1, vlan=250),
     "services.1.vlan: VLAN 250 is outside guard_rails.allowed_vlans (100-249,300)"),
    ("vlan-1-not-allowed-by-default", both(lambda d: d.pop("guard_rails"), svc(0, vlan=1)),
     "services.0.vlan: VLAN 1 is outside guard_rails.allowed_vlans (2-4094)"),
    ("mtu-big", svc(0, mtu=9217), "services.0.mtu: Input should be less than or equal to 9216"),
    ("mtu-small", svc(0, mtu=67), "services.0.mtu: Input should be greater than or equal to 68"),
    ("mtu-ipv6", svc(1, mtu=1279), "services.1.mtu: IPv6 needs at least 1280"),
    ("subnet-host-bits", svc(0, subnet="10.100.0.1/24"),
     "services.0.subnet: invalid network '10.100.0.1/24': 10.100.0.1/24 has host bits set"),
    ("subnet-word", svc(0, subnet="lan"),
     "services.0.subnet: invalid network 'lan': 'lan' does not appear to be an IPv4 or IPv6 network"),
    ("subnet-single-address", svc(0, subnet="10.100.0.1/32", routes=[]),
     "services.0.subnet: 10.100.0.1/32 is a single address: nothing to lease"),
    ("subnet-missing", drop("services", 0, "subnet"), "services.0.subnet: Field required"),
    ("route-prefix-bad", svc(0, routes=[{"prefix": "10.0.0.1/8"}]),
     "services.0.routes.0.prefix: invalid network '10.0.0.1/8': 10.0.0.1/8 has host bits set"),
    ("route-next-hop-bad", svc(0, routes=[{"prefix": "10.0.0.0/8", "next_hop": "x"}]),
     "services.0.routes.0.next_hop: invalid IP address 'x'"),
    ("route-next-hop-off-subnet", svc(0, routes=[{"prefix": "10.0.0.0/8", "next_hop": "10.9.9.9"}]),
     "services.0.routes.0.next_hop: 10.9.9.9 is not in 10.100.0.0/24"),
    ("route-extra", svc(0, routes=[{"prefix": "10.0.0.0/8", "via": "10.100.0.1"}]),
     "services.0.routes.0.via: Extra inputs are not permitted"),
    ("dns-server-bad", svc(0, dns={"servers": ["dns.example.com"]}),
     "services.0.dns.servers: invalid IP address 'dns.example.com'"),
    ("dns-search-bad", svc(0, dns={"search": ["bad domain"]}),
     "services.0.dns.search: invalid search domain 'bad domain'"),
    ("dns-extra", svc(0, dns={"nameservers": []}),
     "services.0.dns.nameservers: Extra inputs are not permitted"),
    ("namespaces-missing", drop("services", 0, "namespaces"), "services.0.namespaces: Field required"),
    ("namespaces-empty", svc(0, namespaces=[]),
     "services.0.namespaces: List should have at least 1 item after validation, not 0"),
    ("namespace-bad", svc(0, namespaces=["My_NS"]), "services.0.namespaces: invalid namespace 'My_NS'"),
    # guard rails
    ("allowed-vlans-backwards", rails(allowed_vlans="199-100"),
     "guard_rails.allowed_vlans: invalid VLAN range '199-100': end before start"),
    ("allowed-vlans-word", rails(allowed_vlans="100-199,lots"),
     "guard_rails.allowed_vlans: invalid VLAN list item 'lots'"),
    ("allowed-vlans-out-of-range", rails(allowed_vlans="100-4095"),
     "guard_rails.allowed_vlans: invalid VLAN ID 4095 (1-4094)"),
    ("allowed-vlans-empty-list", rails(allowed_vlans=[]),
     "guard_rails.allowed_vlans: no VLANs allowed: give ranges like 100-199,300"),
    ("protected-unknown-switch", rails(protected_ports={"tor-z": ["Ethernet1/1"]}),
     "guard_rails.protected_ports.tor-z: no such switch"),
    ("protected-port-bad", rails(protected_ports={"tor-a": ["Ethernet1/1;reload"]}),
     f"guard_rails.protected_ports: {IF_ERR} 'Ethernet1/1;reload'"),
    ("rails-extra", rails(allowed="1"), "guard_rails.allowed: Extra inputs are not permitted"),
    # store, top level
    ("store-extra", lambda d: d["store"].update(kind="redis"), "store.kind: Extra inputs are not permitted"),
    ("top-extra", lambda d: d.update(tor_map=[]), "tor_map: Extra inputs are not permitted"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_rule_names_file_and_field(tmp_path: Path, change: Any, expected: str) -> None:
    path = write(tmp_path, edit(change))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: {expected.format(tmp=tmp_path)}"


def test_unknown_driver_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, edit(sw(0, driver="nope")))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    known = ", ".join(driver_names())
    assert str(exc.value) == f"{path}: switches.0.driver: unknown driver 'nope'; known: {known}"
    assert "dummy-cli" in known and "dummy-nc" in known


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "(top level): Input should be a valid dictionary or instance of ShimConfig"),
        ("switches: [\n  {name: a\n", "not valid YAML or JSON: line 3, column 1: "),
        ('{"switches": [},', "not valid YAML or JSON: line 1, column 15: "),
    ],
    ids=["top-level-list", "bad-yaml", "bad-json"],
)
def test_unparsable_or_wrong_shape_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(exc.value)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": No such file or directory$") as exc:
        load_config(str(tmp_path / "nope.yaml"))
    assert str(exc.value) == f"{tmp_path}/nope.yaml: No such file or directory"
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfeswitches: []")
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path / "bin.yaml"))
    assert str(exc.value) == f"{tmp_path}/bin.yaml: not UTF-8 text (byte 0)"


def test_the_model_itself_cross_checks() -> None:
    """Not only load_config: validating data directly applies the same cross-checks."""
    data = {"switches": [], "port_map": [{"node": "n", "pf": "p0", "switch": "s", "port": "e1"}]}
    with pytest.raises(pydantic.ValidationError, match=r"port_map\.0\.switch: no switch named 's'"):
        ShimConfig.model_validate(data)


# -- valid configs ----------------------------------------------------------------------------------


def test_the_full_config(cfg: ShimConfig, tmp_path: Path) -> None:
    a, b = cfg.switches
    assert (a.name, a.driver, a.transport, a.effective_port, a.host_key_checking) == (
        "tor-a", "dummy-nc", "netconf", 830, True,
    )  # fmt: skip
    assert (b.transport, b.effective_port, b.options) == ("cli", 2222, {"global_delay_factor": 2})
    assert (a.password_file, a.known_hosts) == (f"{tmp_path}/pw", f"{tmp_path}/known_hosts")
    assert (b.password_file, b.key_file) == (None, f"{tmp_path}/id_ed25519")
    assert (a.connect_timeout, a.command_timeout, a.confirm_timeout, a.max_sessions) == (
        10,
        30,
        60,
        1,
    )
    assert cfg.port_map[1].pf == "0000:3b:00.1"
    s = cfg.service("myns.example.com")
    assert (s.vlan, s.mtu, str(s.subnet), s.dns.search) == (
        100,
        9000,
        "10.100.0.0/24",
        ["example.com"],
    )
    assert [(str(r.prefix), str(r.next_hop)) for r in s.routes] == [("10.0.0.0/8", "10.100.0.1")]
    assert [str(x) for x in s.dns.servers] == ["10.100.0.53"]
    assert cfg.service("other.example.com").mtu == 1500
    assert cfg.guard_rails.allowed_vlans == frozenset({*range(100, 250), 300})
    assert "allowed_vlans='100-249,300'" in repr(cfg)  # ranges in logs, not 151 numbers
    assert cfg.store.path == f"{tmp_path}/state/torshim.db"


def test_json_with_tabs_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(BASE, indent="\t"), "torshim.json")
    assert load_config(path).model_dump() == load_config(write(tmp_path, BASE)).model_dump()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "# nothing yet\n"))
    assert (cfg.switches, cfg.port_map, cfg.services) == ([], [], [])
    assert cfg.store.path == DEFAULT_STORE == "/var/lib/sriov-nsm/torshim.db"
    assert cfg.guard_rails.allowed_vlans == frozenset(range(2, 4095))
    assert cfg.guard_rails.protected_ports == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("100-102,300", {100, 101, 102, 300}), (7, {7}), ([7, "10-11"], {7, 10, 11}), ("5", {5})],
)
def test_allowed_vlans_forms(tmp_path: Path, value: Any, expected: set[int]) -> None:
    data = {"guard_rails": {"allowed_vlans": value}}
    assert load_config(write(tmp_path, data)).guard_rails.allowed_vlans == expected


def test_vlan_ranges_is_the_inverse_of_parse() -> None:
    for text in ("100-199,300", "1", "1-4094", "2,4-5,7"):
        assert vlan_ranges(validate.parse_vlan_list(text)) == text
    assert vlan_ranges(frozenset()) == ""


def test_paths_are_relative_to_the_config_folder(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", BASE)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("etc/torshim.yaml")
    assert cfg.switches[0].password_file == f"{tmp_path}/etc/pw"
    assert cfg.store.path == f"{tmp_path}/etc/state/torshim.db"
    assert load_config(path).model_dump() == cfg.model_dump()


def test_memory_store_is_kept(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, {"store": {"path": ":memory:"}})).store.path == ":memory:"


def test_the_shipped_example_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/torshim.yaml loads once its secret files exist (stand-ins for drivers not yet here)."""
    known = driver_names()
    for name, transport in (("openconfig", "netconf"), ("linux", "cli")):
        if name not in known:
            stand_in = type(name, (DummyCli,), {"name": name, "transport": transport})
            monkeypatch.setitem(base._REGISTRY, name, stand_in)
    shutil.copy(REPO / "configs" / "torshim.yaml", tmp_path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tor-a.password").write_text(SECRET + "\n")
    (tmp_path / "secrets" / "tor-b.key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    cfg = load_config(str(tmp_path / "torshim.yaml"))
    assert [(s.name, s.driver, s.effective_port) for s in cfg.switches] == [
        ("tor-a", "openconfig", 830),
        ("tor-b", "linux", 22),
    ]
    assert cfg.port_for("node-a", "ens1f0") == ("tor-a", "Ethernet1/1")
    assert cfg.port_for("node-a", "ens1f1", "0000:3b:00.1") == ("tor-a", "Ethernet1/2")
    assert cfg.port_for("node-a", "ens3f0np0") == ("tor-b", "swp1")
    assert [(s.name, s.vlan) for s in cfg.services] == [
        ("myns.example.com", 100),
        ("other.example.com", 200),
    ]
    assert cfg.is_protected("tor-a", "Ethernet1/49") and cfg.is_protected("tor-b", "eth0")
    assert cfg.switch_params("tor-a").password == SECRET


# -- secrets ----------------------------------------------------------------------------------------


def test_switch_params_reads_the_secret_now(cfg: ShimConfig, tmp_path: Path) -> None:
    p = cfg.switch_params("tor-a")
    assert p == SwitchParams(
        name="tor-a", driver="dummy-nc", host="192.0.2.11", port=830, username="nsm",
        password=SECRET, key_file=None, host_key_checking=True,
        known_hosts=f"{tmp_path}/known_hosts", connect_timeout=10.0, command_timeout=30.0,
        confirm_timeout=60, options={},
    )  # fmt: skip
    (tmp_path / "pw").write_text("rotated\r\n")  # a rotated Kubernetes Secret is picked up
    assert cfg.switch_params("tor-a").password == "rotated"
    b = cfg.switch_params("tor-b")
    assert (b.password, b.key_file, b.port, dict(b.options)) == (
        None, f"{tmp_path}/id_ed25519", 2222, {"global_delay_factor": 2},
    )  # fmt: skip


def test_a_secret_only_loses_its_last_newline(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    (tmp_path / "pw").write_text("  pass word \n\n")
    assert cfg.switch_params("tor-a").password == "  pass word \n"


def test_a_secret_file_gone_after_loading(cfg: ShimConfig, tmp_path: Path) -> None:
    (tmp_path / "pw").unlink()
    with pytest.raises(ConfigError) as exc:
        cfg.switch_params("tor-a")
    assert str(exc.value) == (
        f"{tmp_path}/torshim.yaml: switches.0.password_file: "
        f"cannot read {tmp_path}/pw: No such file or directory"
    )


def test_secrets_never_show(cfg: ShimConfig) -> None:
    params = cfg.switch_params("tor-a")
    assert params.password == SECRET
    shown = [
        repr(cfg), str(cfg), cfg.model_dump(), cfg.model_dump(mode="json"), cfg.model_dump_json(),
        repr(cfg.switches[0]), str(cfg.switches[0]), repr(params), str(params),
    ]  # fmt: skip
    for text in shown:
        assert SECRET not in str(text)


def test_an_inline_secret_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, edit(sw(1, options={"password": SECRET})))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert SECRET not in str(exc.value) and "options" in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


# -- lookups ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "pfs", "expected"),
    [
        ("node-a", ["ens1f0"], ("tor-a", "Ethernet1/1")),
        ("node-a", ["0000:3b:00.1"], ("tor-a", "Ethernet1/2")),
        ("node-a", ["0000:3B:00.1"], ("tor-a", "Ethernet1/2")),
        ("node-a", ["3b:00.1"], ("tor-a", "Ethernet1/2")),
        ("node-a", ["ens1f1", "0000:3b:00.1"], ("tor-a", "Ethernet1/2")),  # name unknown, PCI known
        ("node-a", ["0000:86:00.0", "ens3f0np0"], ("tor-b", "swp1")),
        ("node-b", ["ens1f0"], ("tor-b", "swp2")),  # the same PF name on another node
        ("node-a", ["ens5f0"], None),
        ("node-c", ["ens1f0"], None),
    ],
)
def test_port_for(cfg: ShimConfig, node: str, pfs: list[str], expected: Any) -> None:
    got = cfg.port_for(node, *pfs)
    assert got == expected
    if expected is not None:
        assert isinstance(got, SwitchPort) and (got.switch, got.port) == expected


def test_a_vf_with_its_own_port_is_found_by_its_pci_address(tmp_path: Path) -> None:
    def vf_entries(d: dict[str, Any]) -> None:
        d["port_map"] += [
            {"node": "node-a", "pf": "ens1f0", "vf": "3B:01.0", "switch": "tor-b", "port": "swp7"},
            {
                "node": "node-a",
                "pf": "ens1f0",
                "vf": "0000:3b:01.1",
                "switch": "tor-b",
                "port": "swp8",
            },
        ]

    cfg = load_config(write(tmp_path, edit(vf_entries)))
    assert cfg.vf_port("node-a", "0000:3b:01.0") == ("tor-b", "swp7")
    assert cfg.vf_port("node-a", "3b:01.1") == ("tor-b", "swp8")
    assert cfg.vf_port("node-b", "0000:3b:01.0") is None  # the same address on another node
    assert cfg.vf_port("node-a", "0000:3b:01.2") is None
    assert cfg.vf_port("node-a", "not-a-pci") is None
    # the PF's own entry stays the PF's: a VF entry never answers for the whole PF
    assert cfg.port_for("node-a", "ens1f0") == ("tor-a", "Ethernet1/1")


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        ({"vf": "ens1f0v0"}, "invalid VF"),
        ({"vf": "0000:3b:01.0", "port": "Ethernet1/1"}, "already port_map.0"),  # port taken
    ],
)
def test_bad_vf_entries_are_refused(tmp_path: Path, entry: dict[str, str], text: str) -> None:
    def add(d: dict[str, Any]) -> None:
        new = {"node": "node-a", "pf": "ens1f0", "switch": "tor-a", "port": "Ethernet1/9"}
        new.update(entry)
        d["port_map"].append(new)

    with pytest.raises(ConfigError, match=text):
        load_config(write(tmp_path, edit(add)))


def test_two_entries_for_one_vf_are_refused(tmp_path: Path) -> None:
    def add(d: dict[str, Any]) -> None:
        for port in ("Ethernet1/9", "Ethernet1/10"):
            d["port_map"].append(
                {"node": "node-a", "pf": "ens1f0", "vf": "0000:3b:01.0", "switch": "tor-a",
                 "port": port}
            )  # fmt: skip

    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, edit(add)))
    assert "port_map.5.pf: node-a ens1f0 VF 0000:3b:01.0 is already port_map.4" in str(exc.value)


def test_normalise_pf() -> None:
    assert normalise_pf("3B:00.0") == "0000:3b:00.0"
    assert normalise_pf("0001:af:00.7") == "0001:af:00.7"
    assert normalise_pf("ens1f0") == "ens1f0"


def test_service_lookup(cfg: ShimConfig) -> None:
    s = cfg.service("myns.example.com")
    assert cfg.service("myns.example.com@example.com") is s
    assert s.ref == "myns.example.com@example.com"
    assert s.allows("myns") and s.allows("default") and not s.allows("kube-system")
    assert cfg.service("other.example.com").allows("anything")  # "*"
    with pytest.raises(NotFoundError) as exc:
        cfg.service("myns.example.com@other.org")
    assert str(exc.value) == (
        f"no service 'myns.example.com@other.org' in {cfg._source} "
        "(known: myns.example.com@example.com, other.example.com@example.com)"
    )
    with pytest.raises(NotFoundError, match="no service 'nope'"):
        cfg.service("nope")


def test_switch_lookup(cfg: ShimConfig) -> None:
    assert cfg.switch("tor-b").host == "tor-b.lab.example.com"
    with pytest.raises(NotFoundError, match=r"^no switch named 'tor-z' in .*torshim.yaml$"):
        cfg.switch_params("tor-z")


def test_is_protected(cfg: ShimConfig) -> None:
    assert cfg.is_protected("tor-a", "Ethernet1/49")
    assert cfg.is_protected("tor-a", "MGMT0")
    assert not cfg.is_protected("tor-a", "Ethernet1/1")
    assert not cfg.is_protected("tor-b", "mgmt0")


def test_config_is_immutable(cfg: ShimConfig) -> None:
    with pytest.raises(pydantic.ValidationError):
        cfg.switches[0].host = "203.0.113.1"  # type: ignore[misc]
