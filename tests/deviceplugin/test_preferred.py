"""GetPreferredAllocation on a fake two-socket host: must-include, NUMA, pack vs spread, determinism."""

from __future__ import annotations

import random

import pytest

from deviceplugin.pools import pool_device
from deviceplugin.preferred import preferred
from deviceplugin.types import AllocationError, PoolDevice
from nicinventory.fakesysfs import FakeSysfs, PFSpec, VFSpec
from nicinventory.sysfs import SysfsReader

# PF -> (model, NUMA node (-1: unknown), VFs); VF i of PF bb is 0000:bb:02.i.
PFS = {
    "0000:3b:00.0": ("e810", 0, 4),  # A
    "0000:5e:00.0": ("x710", 0, 4),  # B
    "0000:86:00.0": ("e810", 1, 4),  # C
    "0000:af:00.0": ("x710", 1, 2),  # D
    "0000:d8:00.0": ("82599", -1, 2),  # E: no NUMA information
}
A, B, C, D, E = PFS
a0, a1, a2, a3 = (f"0000:3b:02.{i}" for i in range(4))
b0, b1, b2, b3 = (f"0000:5e:02.{i}" for i in range(4))
c0, c1, c2, c3 = (f"0000:86:02.{i}" for i in range(4))
d0, d1 = "0000:af:02.0", "0000:af:02.1"
e0, e1 = "0000:d8:02.0", "0000:d8:02.1"
ALL = [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, e0, e1]


@pytest.fixture(scope="module")
def devs(tmp_path_factory) -> dict[str, PoolDevice]:
    fs = FakeSysfs(str(tmp_path_factory.mktemp("host") / "sys"))
    for i, (pf, (model, numa, n)) in enumerate(PFS.items()):
        fs.add_pf(PFSpec(model, pf, f"ens{i}f0", numa_node=numa, vfs=[VFSpec() for _ in range(n)]))
    inv = SysfsReader(fs.root).scan()
    out = {vf.pci_address: pool_device(nic, vf) for nic in inv.nics for vf in nic.sriov.vfs}
    assert sorted(out) == ALL
    return out


def run(
    devs: dict[str, PoolDevice],
    available: list[str],
    must: list[str],
    size: int,
    allocated: dict[str, int] | None = None,
    policy: str = "pack",
) -> list[str]:
    return preferred([devs[i] for i in available], must, size, allocated or {}, policy)


CASES = [
    # name, available, must, size, allocated_per_pf, policy, expected
    ("pack: emptiest node, first PF", ALL, [], 2, {}, "pack", [a0, a1]),
    ("pack: the PF already most used", ALL, [], 3, {B: 2}, "pack", [b0, b1, b2]),
    ("pack: spills to the next PF", ALL, [], 6, {B: 2}, "pack", [b0, b1, b2, b3, a0, a1]),
    ("pack: equal load, most free VFs", [a0, b0, b1], [], 1, {}, "pack", [b0]),
    ("pack: load beats free VFs", [a0, b0, b1], [], 1, {A: 1}, "pack", [a0]),
    ("pack: load elsewhere ignored", ALL, [], 2, {"0000:01:00.0": 9}, "pack", [a0, a1]),
    ("spread: round-robin", ALL, [], 3, {}, "spread", [a0, b0, a1]),
    ("spread: least used first", ALL, [], 4, {A: 3}, "spread", [b0, b1, b2, a0]),
    ("spread: exhausted PF skipped", [a0, b0, b1, b2], [], 4, {}, "spread", [a0, b0, b1, b2]),
    ("must-include's node: pack", ALL, [c0], 3, {}, "pack", [c0, c1, c2]),
    ("must-include's node: spread", ALL, [c0], 3, {}, "spread", [c0, d0, c1]),
    ("must-include counts for pack", ALL, [d0], 2, {}, "pack", [d0, d1]),
    ("must-include load ties: free VFs", ALL, [d0], 2, {C: 1}, "pack", [d0, c0]),
    ("must-include node too small", ALL, [c0], 9, {}, "pack", [c0, a0, a1, a2, a3, b0, b1, b2, b3]),
    ("must-include sorted, first", ALL, [a2, a0], 3, {}, "pack", [a0, a2, a1]),
    ("must-include only", ALL, [b1, a3], 2, {}, "spread", [a3, b1]),
    ("no node fits: largest first", ALL, [], 9, {}, "pack", [a0, a1, a2, a3, b0, b1, b2, b3, c0]),
    ("a known node before unknown", [d0, d1, e0, e1], [], 2, {}, "pack", [d0, d1]),
    ("unknown NUMA used last", [a0, e0, e1], [], 2, {}, "pack", [a0, e0]),
    ("unknown NUMA after all nodes", [d0, d1, e0, e1], [], 3, {}, "spread", [d0, d1, e0]),
    ("only unknown NUMA", [e1, e0], [], 2, {}, "pack", [e0, e1]),
    ("fewer available than size", [b1, a0], [], 5, {}, "pack", [a0, b1]),
    ("size 0", ALL, [], 0, {}, "pack", []),
    ("duplicates ignored", [a0, a0, a1], [a0, a0], 2, {}, "pack", [a0, a1]),
]


@pytest.mark.parametrize(
    ("case", "available", "must", "size", "allocated", "policy", "want"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_preferred(
    devs: dict[str, PoolDevice],
    case: str,
    available: list[str],
    must: list[str],
    size: int,
    allocated: dict[str, int],
    policy: str,
    want: list[str],
) -> None:
    assert run(devs, available, must, size, allocated, policy) == want


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("policy", ["pack", "spread"])
def test_deterministic_and_well_formed(devs: dict[str, PoolDevice], seed: int, policy: str) -> None:
    """Kubelet sends sets in no particular order: the answer must not depend on it."""
    rng = random.Random(seed)
    available = rng.sample(ALL, rng.randint(1, len(ALL)))
    must = rng.sample(available, rng.randint(0, min(3, len(available))))
    size = rng.randint(len(must), len(ALL) + 2)
    allocated = {pf: rng.randint(0, 3) for pf in PFS if rng.random() < 0.5}
    got = run(devs, available, must, size, allocated, policy)
    for _ in range(3):
        shuffled = rng.sample(available, len(available))
        assert run(devs, shuffled, rng.sample(must, len(must)), size, allocated, policy) == got
    assert got[: len(must)] == sorted(must)
    assert len(got) == len(set(got)) == min(size, len(available))
    assert set(got) <= set(available)


def test_one_numa_node_whenever_one_fits(devs: dict[str, PoolDevice]) -> None:
    for size in range(1, 9):
        for policy in ("pack", "spread"):
            got = run(devs, ALL, [], size, {}, policy)
            assert {devs[i].numa_node for i in got} == {0}, (size, policy)


@pytest.mark.parametrize(
    ("available", "must", "size", "policy", "message"),
    [
        ([a0, a1], [b0], 2, "pack", "must-include device 0000:5e:02.0 is not among the available"),
        ([a0, a1], [a0, a1], 1, "pack", "size 1 is smaller than the 2 must-include devices"),
        ([a0], [], -1, "pack", "size -1 is smaller than the 0 must-include devices"),
        ([a0], [], 1, "random", "unknown allocation policy 'random'"),
    ],
)
def test_bad_requests(
    devs: dict[str, PoolDevice],
    available: list[str],
    must: list[str],
    size: int,
    policy: str,
    message: str,
) -> None:
    with pytest.raises(AllocationError, match=message):
        run(devs, available, must, size, {}, policy)
