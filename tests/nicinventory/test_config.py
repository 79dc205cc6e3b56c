"""The inventory config file: defaults, YAML and JSON, errors that name the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nicinventory import TorPort
from nicinventory.config import InventoryConfig, load_config
from nicinventory.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DATA = {
    "lldp": {"enabled": False, "lldpcli": "/opt/bin/lldpcli", "socket": "/run/l.sock"},
    "rescan_period": 5.5,
    "tor_map": [
        {"pf": "0000:3b:00.0", "switch": "tor-a", "port": "Ethernet1/1"},
        {"pf": "ens1f1", "switch": "tor-b", "port": "swp2"},
    ],
}
STATIC = {
    "0000:3b:00.0": TorPort("tor-a", "Ethernet1/1", "config"),
    "ens1f1": TorPort("tor-b", "swp2", "config"),
}


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def assert_data(cfg: InventoryConfig) -> None:
    assert (cfg.lldp.enabled, cfg.lldp.lldpcli, cfg.lldp.socket) == (
        False,
        "/opt/bin/lldpcli",
        "/run/l.sock",
    )
    assert cfg.rescan_period == 5.5
    assert cfg.static_tor() == STATIC


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert (cfg.lldp.enabled, cfg.lldp.lldpcli, cfg.lldp.socket) == (True, "lldpcli", None)
    assert cfg.rescan_period == 60
    assert (cfg.tor_map, cfg.static_tor()) == ([], {})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == InventoryConfig()
    assert load_config(write(tmp_path, "# only a comment\n", "c.yaml")) == InventoryConfig()


def test_yaml_file(tmp_path: Path) -> None:
    text = """
lldp: {enabled: false, lldpcli: /opt/bin/lldpcli, socket: /run/l.sock}
rescan_period: 5.5
tor_map:
  - {pf: "0000:3b:00.0", switch: tor-a, port: Ethernet1/1}
  - pf: ens1f1
    switch: tor-b
    port: swp2
"""
    assert_data(load_config(write(tmp_path, text)))


@pytest.mark.parametrize("indent", [None, 2, "\t"], ids=["compact", "spaces", "tabs"])
def test_json_file(tmp_path: Path, indent: int | str | None) -> None:
    assert_data(load_config(write(tmp_path, json.dumps(DATA, indent=indent), "cfg.json")))


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "lldp: {socket: /run/x.sock}\n"))
    assert (cfg.lldp.enabled, cfg.lldp.socket, cfg.rescan_period) == (True, "/run/x.sock", 60)


def test_the_shipped_example_config_loads() -> None:
    cfg = load_config(str(REPO / "configs" / "nicinventory.yaml"))
    assert cfg.static_tor() == {
        "0000:3b:00.0": TorPort("tor-a", "Ethernet1/1", "config"),
        "ens1f1": TorPort("tor-a", "Ethernet1/2", "config"),
    }


CONFIG_ERRORS = [
    ("missing-switch", "tor_map:\n  - {pf: ens1f0, port: swp1}\n", "tor_map.0.switch"),
    ("empty-port", "tor_map: [{pf: a, switch: s, port: p}, {pf: b, switch: s, port: ''}]", "tor_map.1.port"),
    ("extra-entry-key", "tor_map:\n  - {pf: a, switch: s, port: p, vlan: 5}\n", "tor_map.0.vlan"),
    ("tor-map-not-list", "tor_map: {pf: a}\n", "tor_map"),
    ("zero-period", "rescan_period: 0\n", "rescan_period"),
    ("word-period", "rescan_period: soon\n", "rescan_period"),
    ("lldp-key", "lldp: {sock: /run/x}\n", "lldp.sock"),
    ("lldp-enabled", "lldp: {enabled: [1]}\n", "lldp.enabled"),
    ("top-key", "rescan: 5\n", "rescan"),
    ("top-list", "- a\n- b\n", "(top level)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "field"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {field}: ")
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("text", "name"),
    [("lldp: [\n  enabled: true\n", "cfg.yaml"), ('{"lldp": {"enabled": true,}', "cfg.json")],
)
def test_unparsable_file_is_a_one_line_error(tmp_path: Path, text: str, name: str) -> None:
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and "line" in msg
    assert "\n" not in msg


def test_binary_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"\xff\xfe\x00tor_map: []")
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    assert str(exc.value).startswith(f"{path}: not UTF-8")


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path))
    assert str(exc.value).startswith(f"{tmp_path}: ")


def test_tor_map_now_without_lldp_is_the_static_map(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, json.dumps(DATA)))
    tors = cfg.tor_map_now()
    assert tors.lldp == {}
    assert tors.lookup("0000:3b:00.0", "ens1f0") == STATIC["0000:3b:00.0"]
    assert tors.lookup("0000:3b:00.1", "ens1f1") == STATIC["ens1f1"]
    assert tors.lookup("0000:86:00.0", "ens3f0np0") is None


def test_tor_map_now_with_lldp_but_no_lldpcli(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, f"lldp: {{lldpcli: {tmp_path}/absent}}\n"))
    tors = cfg.tor_map_now()
    assert (tors.static, tors.lldp) == ({}, {})
