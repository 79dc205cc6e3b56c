"""The config file: the shipped examples load, relative paths, and each field's refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from nsmgr.registry.config import DEFAULT_LISTEN, load_config, parse_config
from nsmgr.registry.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_the_example_config_is_valid() -> None:
    cfg = load_config(str(REPO / "configs" / "nsm-registry.yaml"))
    assert cfg.domain == "example.com"
    assert cfg.server.listen == DEFAULT_LISTEN
    assert cfg.store.backend == "sqlite"
    assert cfg.proxy.pnsmgr_url == "tcp://10.0.0.9:5004"
    # every default is written out in the example: it says what is in force
    assert cfg.model_dump(exclude={"domain", "proxy"}) == parse_config(
        {"domain": "example.com"}
    ).model_dump(exclude={"domain", "proxy"})


def test_the_cluster_config_is_valid() -> None:
    path = REPO / "deploy" / "config" / "nsm-registry.yaml"
    if not path.exists():
        pytest.skip("no deploy/config/nsm-registry.yaml")
    cfg = load_config(str(path))
    assert cfg.store.backend == "kubernetes"


def test_minimal_config_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "r.json"
    path.write_text('{\t"domain": "Example.COM.", "store": {"path": "state/r.db"}}\n')  # JSON, tabs
    cfg = load_config(str(path))
    assert cfg.domain == "example.com"
    assert cfg.store.path == str(tmp_path / "etc" / "state" / "r.db")
    assert cfg.registration.default_ttl == 60 and cfg.registration.max_ttl == 600
    assert cfg.dns.nameservers == [] and cfg.proxy.enabled


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "<config>: (top level): a mapping of settings is needed"),
        ({}, "<config>: domain: required"),
        (
            {"domain": "x.test", "registration": {"max_ttl": 0}},
            "registration.max_ttl: Input should be greater than 0",
        ),
        ({"domain": "x.test", "dns": {"min_ttl": 400}}, "dns.min_ttl: exceeds max_ttl (300 s)"),
        (
            {"domain": "x.test", "dns": {"attempts": 0}},
            "dns.attempts: Input should be greater than or equal to 1",
        ),
        (
            {"domain": "x.test", "server": {"metrics": "localhost"}},
            "server.metrics: 'localhost' is not host:port",
        ),
        (
            {"domain": "x.test", "server": {"listen": "unix:///" + "x" * 110}},
            "server.listen: unix:// needs",
        ),
        (
            {"domain": "x.test", "store": {"kubernetes": {"namespace": "a.b"}}},
            "store.kubernetes.namespace: invalid",
        ),
    ],
)
def test_refusals_name_the_field(data: object, message: str) -> None:
    if isinstance(data, dict) and data:
        data = {"domain": "x.test", **data}
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    text = str(e.value)
    assert text.startswith(message if message.startswith("<") else f"<config>: {message}"), text
