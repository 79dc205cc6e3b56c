"""The lab's description: pure, no root needed."""

from __future__ import annotations

import pytest

from lab.cli import main
from lab.topology import SpecError, build_topology, load_spec


def test_default_lab_two_pfs_of_different_speeds():
    lab = build_topology(load_spec(), "nsmlab", root="/tmp/x")
    assert [(pf.model, pf.speed_mbps, len(pf.vfs)) for pf in lab.pfs] == [
        ("e810", 100000, 4),
        ("x710", 10000, 2),
    ]
    assert [vf.tor_port for vf in lab.vfs] == [f"swp{i}" for i in range(1, 7)]
    assert lab.pfs[0].vfs[0].pci_address == "0000:3b:02.0"
    assert lab.pfs[0].vfs[0].netdev == "ens1f0v0"
    assert (lab.node_ns, lab.tor_ns, lab.mgmt_host_if) == ("nsmlab-node", "nsmlab-tor", "nsmlab-mg")
    assert lab.state_dir == "/tmp/x/nsmlab"
    assert len({vf.mac for vf in lab.vfs}) == 6


def test_longest_prefix_still_fits_interface_names():
    lab = build_topology(load_spec(), "abcdefghij")
    assert len(lab.mgmt_host_if) <= 15


@pytest.mark.parametrize(
    ("prefix", "spec", "msg"),
    [
        ("Bad", None, "invalid prefix"),
        ("abcdefghijk", None, "invalid prefix"),
        ("ok", {"pfs": []}, "pfs: a non-empty list"),
        ("ok", {"pfs": [{"model": "nope", "pci_address": "0000:01:00.0", "ifname": "e", "vfs": 1}]},
         "model: 'nope' unknown"),
        ("ok", {"pfs": [{"model": "x710", "pci_address": "0000:01:00.0", "ifname": "averylongname1",
                         "vfs": 1}]}, "not a Linux interface name"),
        ("ok", {"pfs": [{"model": "x710", "pci_address": "1:0.0", "ifname": "e", "vfs": 1}]},
         "pci_address"),
        ("ok", {"pfs": [{"model": "x710", "pci_address": "0000:01:00.0", "ifname": "e", "vfs": 0}]},
         "vfs: a VF count"),
        ("ok", {"pfs": [], "extra": 1}, "unknown key 'extra'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(prefix, spec, msg):
    with pytest.raises(SpecError, match=msg):
        build_topology(spec if spec is not None else load_spec(), prefix)


def test_cli_bad_input_exit_2(tmp_path, capsys):
    assert main(["up", "--prefix", "BAD"]) == 2
    assert main(["status", "-o", "xml"]) == 2
    bad = tmp_path / "lab.yaml"
    bad.write_text("pfs: [{model: x710, pci_address: '0000:01:00.0', ifname: e, vfs: 99}]\n")
    assert main(["up", "--prefix", "zz", "--spec", str(bad)]) == 2
    assert main(["up", "--spec", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("nsm-lab: ") for line in err)
    assert "Traceback" not in "".join(err)


def test_a_command_line_names_the_state_dir_only_as_a_whole_path() -> None:
    from lab.build import names_dir

    sd = "/run/nsm-lab/t1"
    assert names_dir("python -m lab.node --state-dir /run/nsm-lab/t1 --node a ", sd)
    assert names_dir("sshd -D -f /run/nsm-lab/t1/etc/sshd_config ", sd + "/")
    assert not names_dir("sshd -D -f /run/nsm-lab/t12/etc/sshd_config ", sd)  # another lab
    assert not names_dir("python -m lab.node --state-dir /run/nsm-lab/t12 ", sd)
