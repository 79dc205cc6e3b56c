"""The config file: the example is valid, and every error is one line naming file and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nsmgr.config import load_config, parse_config
from nsmgr.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid() -> None:
    cfg = load_config(str(REPO / "configs" / "nsmgr.yaml"))
    assert cfg.node_name == "node-a"
    assert cfg.pf_side == "netlink"
    svc = cfg.services[0]
    assert (svc.name, svc.vlan, svc.mtu, svc.subnet) == (
        "myns.example.com",
        100,
        9000,
        "10.100.0.0/24",
    )
    assert svc.routes[0].via == "10.100.0.1"
    assert cfg.pods is None


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "nsmgr.yaml"
    f.write_text("state_dir: state\nnode_name: n1\npods: {cri_socket: ''}\n")
    cfg = load_config(str(f))
    assert cfg.state_dir == str(tmp_path / "state")  # relative to the file's folder
    assert cfg.socket == "/var/lib/networkservicemesh/nsm.io.sock"
    assert cfg.sysfs_root == "/sys" and cfg.node_netns is None
    assert cfg.pods is not None and cfg.pods.cri_socket == ""
    assert cfg.pods.node_name == "n1"  # the pod integration watches this node by default


def test_json_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text('{\t"node_name": "n1", "services": [{"name": "a.example.com"}]}')
    assert load_config(str(f)).services[0].allowed_namespaces == ["*"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("bogus: 1", "bogus: Extra inputs are not permitted"),
        ("node_name: Node_A", "node_name: invalid node name 'Node_A'"),
        ("pf_side: sometimes", "pf_side: Input should be 'netlink' or 'none'"),
        (f"socket: /tmp/{'x' * 120}", "socket: 125 bytes: a unix socket path has at most 107"),
        ("services: [{name: x, vlan: 5000}]", "services.0.vlan: Input should be less than"),
        ("services: [{name: 'My Service'}]", "services.0.name: network service 'My Service'"),
        ("services: [{name: a@b.c}]", "services.0.name: give the domain in `domain`"),
        ("services: [{name: a, subnet: 10.0.0.1/24}]", "services.0.subnet: invalid network"),
        (
            "services: [{name: a, subnet: 10.0.0.1/32}]",
            "services.0.subnet: 10.0.0.1/32 is a single",
        ),
        (
            "services: [{name: a, subnet: 10.0.0.0/24, routes: [{prefix: 0.0.0.0/0, via: 10.1.0.1}]}]",
            "services.0.routes.0.via: 10.1.0.1 is not in 10.0.0.0/24",
        ),
        (
            "services: [{name: a, routes: [{prefix: 0.0.0.0/0, via: 10.1.0.1}]}]",
            "needs the service's subnet",
        ),
        ("services: [{name: a, vlan_qos: 3}]", "services.0.vlan_qos: QoS and protocol apply"),
        (
            "services: [{name: a, allowed_namespaces: []}]",
            "services.0.allowed_namespaces: give at least",
        ),
        ("services: [{name: a, allowed_namespaces: [Bad_NS]}]", "invalid namespace 'Bad_NS'"),
        (
            "services: [{name: a, dns: {servers: [x]}}]",
            "services.0.dns.servers: invalid IP address",
        ),
        (
            "services: [{name: a, vf: {link_state: up}}]",
            "services.0.vf.link_state: Input should be",
        ),
        ("services: [{name: a}, {name: a}]", "services.1.name: a is already services.0"),
        ("[1, 2]", "(top level): expected a mapping"),
        ("a: [", "not valid YAML or JSON: line 2"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, where: str) -> None:
    f = tmp_path / "nsmgr.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    msg = str(e.value)
    assert msg.startswith(f"{f}: ") and where in msg, msg
    assert "\n" not in msg


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^/nonexistent/nsmgr.yaml: No such file"):
        load_config("/nonexistent/nsmgr.yaml")


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^lab: workers: "):
        parse_config({"workers": 0}, "lab")


def test_check_config_cli(tmp_path: Path) -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "nsmgr.cli",
            "check-config",
            "--config",
            str(REPO / "configs" / "nsmgr.yaml"),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert '"myns.example.com"' in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [{name: a, vlan: -1}]\n")
    res = subprocess.run(
        [sys.executable, "-m", "nsmgr.cli", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "services.0.vlan" in res.stderr
    assert "Traceback" not in res.stderr


def test_pods_block_errors_name_their_field(tmp_path: Path) -> None:
    f = tmp_path / "nsmgr.yaml"
    f.write_text("node_name: n1\npods: {anything: 1}\n")
    with pytest.raises(ConfigError, match=r"nsmgr.yaml: pods.anything: Extra inputs"):
        load_config(str(f))
