"""The `nicinventory` command as a user runs it: list/show output, fake-sysfs, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nicinventory.cli import main
from tests.nicinventory.test_sysfs import assert_inventory_contract, nic_contract_errors

CLI = [sys.executable, "-m", "nicinventory.cli"]
SAMPLE_TOR = {
    "ens1f0": ("tor-a", "Ethernet1/1"),
    "ens1f1": ("tor-a", "Ethernet1/2"),
    "ens3f0np0": ("tor-b", "Ethernet2/1"),
    "ens5f0": None,
    "ens7f0": None,
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def call(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """main() in-process; its stdout, after checking it succeeded quietly."""
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    return out


def tors(doc: dict[str, Any]) -> dict[str, tuple[str, str] | None]:
    return {
        n["ifname"]: (n["tor"]["switch"], n["tor"]["port"]) if n["tor"] else None
        for n in doc["nics"]
    }


def without_tor(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in n.items() if k != "tor"} for n in doc["nics"]]


# -- list and show --------------------------------------------------------------------------------


def test_sample_list_json_follows_the_contract() -> None:
    res = run("--sample", "list", "-o", "json")
    assert (res.returncode, res.stderr) == (0, "")
    doc = json.loads(res.stdout)
    assert_inventory_contract(doc)
    assert [n["pci_address"] for n in doc["nics"]] == [
        "0000:3b:00.0",
        "0000:3b:00.1",
        "0000:86:00.0",
        "0000:af:00.0",
        "0000:d8:00.0",
    ]
    assert tors(doc) == SAMPLE_TOR
    assert {n["tor"]["source"] for n in doc["nics"] if n["tor"]} == {"config"}


def test_sample_list_yaml_is_the_same_data(capsys: pytest.CaptureFixture[str]) -> None:
    as_json = json.loads(call(capsys, "--sample", "list", "-o", "json"))
    assert yaml.safe_load(call(capsys, "--sample", "list", "-o", "yaml")) == as_json


def test_sample_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    out = call(capsys, "--sample", "list")
    assert "5 NICs" in out
    row = next(line for line in out.splitlines() if "ens1f0 " in line)
    assert "tor-a" in row and "Ethernet1/1" in row and "0000:3b:00.0" in row
    assert "ens1f0v0" not in out
    assert "ens1f0v0" in call(capsys, "--sample", "list", "--vfs")


@pytest.mark.parametrize(
    ("name", "pci", "ifname"),
    [
        ("ens1f0", "0000:3b:00.0", "ens1f0"),
        ("0000:3b:00.1", "0000:3b:00.1", "ens1f1"),
        ("0000:86:02.4", "0000:86:00.0", "ens3f0np0"),  # a vfio VF's address finds its PF
        ("ens5f0v2", "0000:af:00.0", "ens5f0"),  # a VF netdev finds its PF
    ],
)
def test_show_json(capsys: pytest.CaptureFixture[str], name: str, pci: str, ifname: str) -> None:
    nic = json.loads(call(capsys, "--sample", "show", name, "-o", "json"))
    assert (nic["pci_address"], nic["ifname"]) == (pci, ifname)
    assert nic_contract_errors(nic) == []


def test_show_ens1f0(capsys: pytest.CaptureFixture[str]) -> None:
    nic = json.loads(call(capsys, "--sample", "show", "ens1f0", "-o", "json"))
    assert (nic["vendor_id"], nic["device_id"], nic["driver"]) == ("8086", "1592", "ice")
    assert (nic["tor"]["switch"], nic["tor"]["port"]) == ("tor-a", "Ethernet1/1")
    assert [v["driver"] for v in nic["sriov"]["vfs"]] == ["iavf"] * 6 + ["vfio-pci", None]
    table = call(capsys, "--sample", "show", "ens1f0")
    assert "0000:3b:00.0" in table and "VFs of ens1f0" in table and "0000:3b:02.7" in table


def test_show_by_vf_address_in_a_subprocess() -> None:
    res = run("--sample", "show", "0000:3b:02.6", "-o", "json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ifname"] == "ens1f0"


# -- fake-sysfs and --sysfs-root ------------------------------------------------------------------


def test_fake_sysfs_then_sysfs_root_matches_sample(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    res = run("fake-sysfs", str(root))
    assert (res.returncode, res.stderr) == (0, "")
    assert "5 NICs" in res.stdout and "22 VFs" in res.stdout
    mine = run("--sysfs-root", str(root), "list", "-o", "json")
    assert mine.returncode == 0, mine.stderr
    sample = run("--sample", "list", "-o", "json")
    doc = json.loads(mine.stdout)
    assert_inventory_contract(doc)
    assert without_tor(doc) == without_tor(json.loads(sample.stdout))


def test_fake_sysfs_into_an_existing_empty_dir(tmp_path: Path, capsys: Any) -> None:
    assert main(["fake-sysfs", str(tmp_path)]) == 0
    capsys.readouterr()
    doc = json.loads(call(capsys, "--sysfs-root", str(tmp_path), "list", "-o", "json"))
    assert len(doc["nics"]) == 5


def test_config_static_tor_map_on_sysfs_root(tmp_path: Path, capsys: Any) -> None:
    root = tmp_path / "sys"
    assert main(["fake-sysfs", str(root)]) == 0
    cfg = tmp_path / "inv.yaml"
    cfg.write_text(
        "lldp: {enabled: false}\n"
        "tor_map:\n"
        "  - {pf: ens5f0, switch: tor-z, port: swp9}\n"
        "  - {pf: '0000:d8:00.0', switch: tor-y, port: Ethernet3/3}\n"
    )
    capsys.readouterr()
    args = ["--config", str(cfg), "--sysfs-root", str(root), "list", "-o", "json"]
    doc = json.loads(call(capsys, *args))
    assert tors(doc) == {
        "ens1f0": None,
        "ens1f1": None,
        "ens3f0np0": None,
        "ens5f0": ("tor-z", "swp9"),
        "ens7f0": ("tor-y", "Ethernet3/3"),
    }
    assert next(n for n in doc["nics"] if n["ifname"] == "ens5f0")["tor"]["source"] == "config"


def test_sample_with_config_the_config_wins(tmp_path: Path, capsys: Any) -> None:
    """A user's static entry (by ifname) overrides the sample spec's entry (by PCI address)."""
    cfg = tmp_path / "inv.yaml"
    cfg.write_text("tor_map:\n  - {pf: ens1f0, switch: tor-z, port: swp1}\n")
    doc = json.loads(call(capsys, "--sample", "--config", str(cfg), "list", "-o", "json"))
    assert tors(doc) == {**SAMPLE_TOR, "ens1f0": ("tor-z", "swp1")}


# -- bad input: exit 2, one line on stderr, no traceback ------------------------------------------


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


SPEC = "nics: [{model: e810, pci_address: '0000:3b:00.0', ifname: ens1f0, vfs: {'0-1': netdev}}"
Case = Callable[[Path], tuple[list[str], str]]
ERRORS: dict[str, Case] = {
    "unknown-nic": lambda t: (["--sample", "show", "ens9f9"], "ens9f9"),
    "missing-root": lambda t: (["--sysfs-root", str(t / "absent"), "list"], str(t / "absent")),
    "not-sysfs": lambda t: (["--sysfs-root", str(t), "list"], "not a sysfs tree"),
    "root-is-a-file": lambda t: (["--sysfs-root", _write(t / "f", "x"), "list"], str(t / "f")),
    "config-not-yaml": lambda t: (["--config", _write(t / "c.yaml", "lldp: [\n  x: 1\n"), "--sample", "list"], "c.yaml"),  # noqa: E501
    "config-field": lambda t: (["--config", _write(t / "c.yaml", "tor_map: [{pf: a, port: p}]"), "--sample", "list"], "tor_map.0.switch"),  # noqa: E501
    "config-missing": lambda t: (["--config", str(t / "none.yaml"), "--sample", "list"], "none.yaml"),
    "bad-output": lambda t: (["--sample", "list", "-o", "xml"], "xml"),
    "no-command": lambda t: (["--sample"], "command"),
    "fake-non-empty": lambda t: (["fake-sysfs", str(Path(_write(t / "d" / "f", "x")).parent)], "not empty"),
    "fake-onto-a-file": lambda t: (["fake-sysfs", _write(t / "f", "x")], str(t / "f")),
    "fake-bad-spec": lambda t: (["fake-sysfs", "--spec", _write(t / "s.yaml", "nics: [{model: e9}]"), str(t / "o")], "nics.0.model"),  # noqa: E501
    "fake-too-many-vfs": lambda t: (["fake-sysfs", "--spec", _write(t / "s.yaml", SPEC.replace("0-1", "0-200") + "]"), str(t / "o")], "nics.0.vfs"),  # noqa: E501
    "fake-same-pci-twice": lambda t: (["fake-sysfs", "--spec", _write(t / "s.yaml", SPEC + ", " + SPEC[7:] + "]"), str(t / "o")], "0000:3b:00.0"),  # noqa: E501
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    args, fragment = ERRORS[case](tmp_path)
    res = run(*args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("nicinventory") and fragment in lines[0]
    assert res.stdout == ""
