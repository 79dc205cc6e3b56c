"""The `torshim` command as a user runs it: render (what would be sent, nothing opened), drivers,
check-config, and bad input (exit 2, one line, no traceback)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from tests.torshim.test_config import BASE, SECRET, DummyCli, dummy_drivers, write
from torshim.cli import RENDER_HOST, main, render_change
from torshim.drivers.base import SwitchParams, driver_class, driver_names
from torshim.model import PortChange, PortConfig

__all__ = [
    "dummy_drivers"
]  # the autouse fixture: the stand-in drivers are registered in every test

REPO = Path(__file__).resolve().parents[2]
# A subprocess that knows the stand-in drivers, then runs the CLI as a user would.
WITH_DUMMIES = (
    "import sys; from tests.torshim.test_config import register_dummies; register_dummies(); "
    "from torshim.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run(*args: str, dummies: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", WITH_DUMMIES] if dummies else [sys.executable, "-m", "torshim.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


def call(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """main() in-process; its stdout, after checking it succeeded quietly."""
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    return out


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """main() in-process on bad input: exit 2, nothing on stdout, one line on stderr (returned)."""
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.startswith("torshim: error: ") and err.endswith("\n") and err.count("\n") == 1
    return err.removeprefix("torshim: error: ").rstrip("\n")


def render(capsys: pytest.CaptureFixture[str], *args: str, driver: str = "dummy-cli") -> str:
    return call(capsys, "render", "--driver", driver, "--port", "Ethernet1/1", *args)


# -- render ---------------------------------------------------------------------------------------


def test_render_adds_vlans_to_a_fresh_trunk(capsys: pytest.CaptureFixture[str]) -> None:
    out = render(capsys, "--vlans", "100,200")
    assert out == "interface Ethernet1/1\nmode trunk\nvlan add 100\nvlan add 200\n"
    (made,) = DummyCli.made  # one driver object, pointed nowhere: nothing was opened
    assert (made.name, made.driver, made.host) == ("render", "dummy-cli", RENDER_HOST)


def test_render_from_current_vlans_sends_only_the_difference(capsys: Any) -> None:
    out = render(capsys, "--vlans", "100,200", "--from-vlans", "100")
    assert out == "interface Ethernet1/1\nvlan add 200\n"


def test_render_remove(capsys: pytest.CaptureFixture[str]) -> None:
    out = render(capsys, "--vlans", "200", "--remove", "--from-vlans", "100,200")
    assert out == "interface Ethernet1/1\nvlan remove 200\n"
    # without --from-vlans, removing assumes the port carries exactly the VLANs named
    assert render(capsys, "--vlans", "100-101", "--remove") == (
        "interface Ethernet1/1\nvlan remove 100\nvlan remove 101\n"
    )


def test_render_native_vlan(capsys: pytest.CaptureFixture[str]) -> None:
    out = render(capsys, "--vlans", "100", "--native", "100", "--from-vlans", "100")
    assert out == "interface Ethernet1/1\nnative vlan 100\n"


def test_render_access(capsys: pytest.CaptureFixture[str]) -> None:
    assert render(capsys, "--mode", "access", "--vlans", "300") == (
        "interface Ethernet1/1\nmode access\naccess vlan 300\n"
    )
    assert render(capsys, "--mode", "access", "--vlans", "300", "--remove") == (
        "interface Ethernet1/1\naccess vlan default\n"
    )
    assert render(capsys, "--mode", "access", "--vlans", "300", "--from-vlans", "200") == (
        "interface Ethernet1/1\naccess vlan 300\n"
    )


def test_render_nothing_to_change(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (
        ["--vlans", "100", "--from-vlans", "100,200"],
        ["--vlans", "300", "--remove", "--from-vlans", "100"],
        ["--mode", "access", "--vlans", "300", "--remove", "--from-vlans", "200"],
    ):
        rc = main(["render", "--driver", "dummy-cli", "--port", "Ethernet1/1", *args])
        out, err = capsys.readouterr()
        assert (rc, out) == (0, "")
        assert err == "torshim: nothing to send: the port is already in that state\n"


def test_render_xml_driver(capsys: pytest.CaptureFixture[str]) -> None:
    out = render(capsys, "--vlans", "200,100", driver="dummy-nc")
    root = etree.fromstring(out.encode())
    assert root.find("port").get("name") == "Ethernet1/1"
    assert root.findtext("port/trunk-vlans") == "100 200"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_render_as_data(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    out = render(capsys, "--vlans", "200", "--from-vlans", "100", "-o", fmt)
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    assert doc == {
        "driver": "dummy-cli",
        "transport": "cli",
        "before": {"port": "Ethernet1/1", "mode": "trunk", "access_vlan": None,
                   "native_vlan": None, "trunk_vlans": [100]},
        "after": {"port": "Ethernet1/1", "mode": "trunk", "access_vlan": None,
                  "native_vlan": None, "trunk_vlans": [100, 200]},
        "lines": ["interface Ethernet1/1", "vlan add 200"],
        "xml": "",
    }  # fmt: skip


def test_render_change_is_the_diff_a_driver_would_get() -> None:
    from torshim.cli import build_parser

    args = build_parser().parse_args(
        ["render", "--driver", "x", "--port", "swp1", "--vlans", "5", "--from-vlans", "4"]
    )
    assert render_change(args) == PortChange(
        PortConfig.trunk("swp1", {4}), PortConfig.trunk("swp1", {4, 5})
    )


BAD_RENDER = [
    ("port-semicolon", ["--port", "Ethernet1/1;reload", "--vlans", "100"],
     "invalid interface name 'Ethernet1/1;reload'"),
    ("port-newline", ["--port", "Ethernet1/1\nreload", "--vlans", "100"],
     "invalid interface name 'Ethernet1/1\\nreload'"),
    ("port-xml", ["--port", "Eth1</name><x>", "--vlans", "100"],
     "invalid interface name 'Eth1</name><x>'"),
    ("port-space", ["--port", "Ethernet1/1 ", "--vlans", "100"], "invalid interface name 'Ethernet1/1 '"),
    ("vlans-injection", ["--port", "Ethernet1/1", "--vlans", "100; rm -rf /"],
     "invalid VLAN list item '100; rm -rf /'"),
    ("vlan-zero", ["--port", "Ethernet1/1", "--vlans", "0"], "invalid VLAN ID 0 (1-4094)"),
    ("vlan-4095", ["--port", "Ethernet1/1", "--vlans", "100,4095"], "invalid VLAN ID 4095 (1-4094)"),
    ("vlan-range-backwards", ["--port", "Ethernet1/1", "--vlans", "200-100"],
     "invalid VLAN range '200-100': end before start"),
    ("vlans-empty", ["--port", "Ethernet1/1", "--vlans", ""], "invalid VLAN list item ''"),
    ("from-vlans-bad", ["--port", "Ethernet1/1", "--vlans", "100", "--from-vlans", "x"],
     "invalid VLAN list item 'x'"),
    ("native-bad", ["--port", "Ethernet1/1", "--vlans", "100", "--native", "1;2"],
     "invalid VLAN ID '1;2' (1-4094)"),
    ("access-two-vlans", ["--port", "Ethernet1/1", "--mode", "access", "--vlans", "100,200"],
     "an access port carries one VLAN: --vlans has 2"),
    ("access-native", ["--port", "Ethernet1/1", "--mode", "access", "--vlans", "100", "--native", "5"],
     "--native applies to trunk ports only"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"), [c[1:] for c in BAD_RENDER], ids=[c[0] for c in BAD_RENDER]
)
def test_render_bad_input(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert fails(capsys, "render", "--driver", "dummy-cli", *args) == message
    assert DummyCli.made == []  # refused before any driver exists


def test_render_unknown_driver(capsys: pytest.CaptureFixture[str]) -> None:
    msg = fails(capsys, "render", "--driver", "nope", "--port", "Ethernet1/1", "--vlans", "100")
    assert msg == f"unknown driver 'nope'; known: {', '.join(driver_names())}"


def test_render_what_the_driver_cannot_do(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["render", "--driver", "dummy-nc", "--port", "Ethernet1/1", "--vlans", "100"]
    assert fails(capsys, *base, "--native", "100") == "dummy-nc does not support a native VLAN"
    assert fails(capsys, *base, "--mode", "access") == "dummy-nc does not support access ports"


SUBPROCESS_BAD = [
    ("injection", ["render", "--driver", "dummy-cli", "--port", "Ethernet1/1;reload", "--vlans", "1"]),
    ("newline", ["render", "--driver", "dummy-cli", "--port", "Ethernet1/1\nreload", "--vlans", "1"]),
    ("vlan", ["render", "--driver", "dummy-nc", "--port", "Ethernet1/1", "--vlans", "100; rm"]),
    ("unknown-driver", ["render", "--driver", "nope", "--port", "Ethernet1/1", "--vlans", "100"]),
    ("unsupported", ["render", "--driver", "dummy-nc", "--port", "e1", "--vlans", "1", "--native", "1"]),
    ("missing-option", ["render", "--driver", "dummy-cli", "--vlans", "100"]),
    ("bad-mode", ["render", "--driver", "dummy-cli", "--port", "e1", "--vlans", "1", "--mode", "x"]),
    ("bad-format", ["drivers", "-o", "xml"]),
    ("no-command", []),
    ("missing-config", ["check-config", "--config", "/nonexistent/torshim.yaml"]),
]  # fmt: skip


@pytest.mark.parametrize("args", [c[1] for c in SUBPROCESS_BAD], ids=[c[0] for c in SUBPROCESS_BAD])
def test_bad_input_exits_2_with_one_line(args: list[str]) -> None:
    res = run(*args)
    assert (res.returncode, res.stdout) == (2, "")
    assert "Traceback" not in res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert (
        res.stderr.startswith("torshim") and ": error: " in res.stderr
    )  # argparse: "torshim render: error:"


def test_unknown_driver_without_stand_ins() -> None:
    """`python -m torshim.cli` as shipped: whatever drivers exist, an unknown one is one line."""
    res = run("render", "--driver", "nope", "--port", "Ethernet1/1", "--vlans", "1", dummies=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("torshim: error: unknown driver 'nope'; known: ")
    assert len(res.stderr.splitlines()) == 1


def test_console_script_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["torshim"] == "torshim.cli:main"


# -- the real drivers, when they are here -----------------------------------------------------------


def real_driver(name: str) -> str:
    try:
        importlib.import_module(f"torshim.drivers.{name}")
    except ImportError as e:
        pytest.skip(f"driver {name!r} not importable yet: {e}")
    if name not in driver_names():
        pytest.skip(f"driver {name!r} is not registered")
    return name


@pytest.mark.parametrize("name", ["openconfig", "cisco_ios"])
@pytest.mark.parametrize(
    "args",
    [
        ["--vlans", "100,200"],
        ["--vlans", "200", "--from-vlans", "100"],
        ["--vlans", "100", "--remove", "--from-vlans", "100,200"],
    ],
    ids=["add", "add-to-existing", "remove"],
)
def test_render_with_a_real_driver(capsys: Any, name: str, args: list[str]) -> None:
    """The CLI prints exactly what the driver's render() returns for the same change."""
    real_driver(name)
    out = render(capsys, *args, driver=name)
    from torshim.cli import build_parser

    change = render_change(
        build_parser().parse_args(["render", "--driver", name, "--port", "Ethernet1/1", *args])
    )
    cls = driver_class(name)
    expected = cls(SwitchParams(name="render", driver=name, host=RENDER_HOST)).render([change])
    assert out.rstrip("\n") == expected.text().rstrip("\n") and out.strip()
    if cls.transport == "netconf":
        etree.fromstring(out.encode())  # one well-formed document


@pytest.mark.parametrize("name", ["openconfig", "cisco_ios"])
@pytest.mark.parametrize("port", ["Ethernet1/1;reload", "Ethernet1/1\nreload", "Eth1</name>"])
def test_real_drivers_refuse_injection(capsys: Any, name: str, port: str) -> None:
    real_driver(name)
    msg = fails(capsys, "render", "--driver", name, "--port", port, "--vlans", "100")
    assert msg.startswith("invalid interface name")


# -- drivers --------------------------------------------------------------------------------------


def test_drivers_json(capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(call(capsys, "drivers", "-o", "json"))
    rows = {d["name"]: d for d in doc["drivers"]}
    assert list(rows) == driver_names()
    assert rows["dummy-cli"] == {
        "name": "dummy-cli",
        "transport": "cli",
        "capabilities": ["access", "native-vlan", "trunk"],
        "description": "A test flavour that renders one CLI line per step.",
    }
    assert rows["dummy-nc"]["transport"] == "netconf" and rows["dummy-nc"]["capabilities"] == [
        "trunk"
    ]
    for d in rows.values():
        assert d["transport"] in ("cli", "netconf")


def test_drivers_table_and_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    out = call(capsys, "drivers")
    assert f"{len(driver_names())} drivers" in out
    row = next(line for line in out.splitlines() if "dummy-nc" in line)
    assert "netconf" in row and "trunk" in row
    as_yaml = yaml.safe_load(call(capsys, "drivers", "-o", "yaml"))
    assert as_yaml == json.loads(call(capsys, "drivers", "-o", "json"))


# -- check-config ---------------------------------------------------------------------------------


def test_check_config_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = call(capsys, "check-config", "--config", write(tmp_path, BASE))
    assert SECRET not in out
    assert "2 switches" in out and "2 services" in out and "4 port map entries" in out
    row = next(line for line in out.splitlines() if "tor-a " in line and "dummy-nc" in line)
    assert "192.0.2.11:830" in row and "password (file)" in row and "checked" in row
    row = next(line for line in out.splitlines() if "tor-b " in line and "dummy-cli" in line)
    assert "tor-b.lab.example.com:2222" in row and "key (file)" in row
    row = next(line for line in out.splitlines() if "myns.example.com@example.com" in line)
    assert "100" in row and "9000" in row and "10.100.0.0/24" in row and "default, myns" in row
    assert any("0000:3b:00.1" in line and "Ethernet1/2" in line for line in out.splitlines())
    assert "100-249,300" in out and "Ethernet1/49, mgmt0" in out


def test_check_config_warns_of_unchecked_host_keys(capsys: Any, tmp_path: Path) -> None:
    data = json.loads(json.dumps(BASE))
    data["switches"][1]["host_key_checking"] = False
    out = call(capsys, "check-config", "--config", write(tmp_path, data))
    assert "NOT CHECKED" in next(line for line in out.splitlines() if "tor-b " in line)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_check_config_as_data(capsys: Any, tmp_path: Path, fmt: str) -> None:
    out = call(capsys, "check-config", "--config", write(tmp_path, BASE), "-o", fmt)
    assert SECRET not in out
    doc = json.loads(out) if fmt == "json" else yaml.safe_load(out)
    a = doc["switches"][0]
    assert (a["name"], a["transport"], a["port"], a["password_file"]) == (
        "tor-a", "netconf", 830, f"{tmp_path}/pw",
    )  # fmt: skip
    assert doc["guard_rails"]["allowed_vlans"] == "100-249,300"
    assert [s["vlan"] for s in doc["services"]] == [100, 200]
    assert doc["services"][1]["subnet"] == "fd00:200::/64"


def test_check_config_errors_are_one_line(tmp_path: Path) -> None:
    data = json.loads(json.dumps(BASE))
    data["port_map"][0]["port"] = "Ethernet1/49"
    path = write(tmp_path, data)
    res = run("check-config", "--config", path)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == (
        f"torshim: error: {path}: port_map.0.port: tor-a Ethernet1/49 is a protected port\n"
    )


def test_check_config_never_prints_an_inline_secret(tmp_path: Path) -> None:
    data = json.loads(json.dumps(BASE))
    data["switches"][0]["password"] = SECRET
    res = run("check-config", "--config", write(tmp_path, data))
    assert res.returncode == 2 and SECRET not in res.stderr + res.stdout
    assert (
        res.stderr.count("\n") == 1
        and "switches.0.password: secrets are read from files" in res.stderr
    )


def test_check_config_in_a_subprocess(tmp_path: Path) -> None:
    res = run("check-config", "--config", write(tmp_path, BASE), "-o", "json")
    assert (res.returncode, res.stderr) == (0, "")
    assert SECRET not in res.stdout
    assert len(json.loads(res.stdout)["port_map"]) == 4
