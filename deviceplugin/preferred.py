"""GetPreferredAllocation: which VFs we would like kubelet to pick, and in what order of concern.

1. Every must-include device, first (kubelet has already allocated them to this container).
2. The rest on one NUMA node when one can hold it: the must-include devices' node if it fits, else
   the node that fits with the most free devices. When none fits, nodes are filled in that order
   (largest first). Devices with an unknown NUMA node form their own group, always used last.
3. Within that, by the pool's policy and `allocated_per_pf` (VFs already held, per PF PCI address,
   must-include devices counted too):
   - "pack": fill the PF with the most allocated first, then the one with most free VFs; keeps whole
     PFs free for pods that need many VFs on one port.
   - "spread": each pick goes to the PF with the least allocated so far (round-robin once they are
     level); spreads the blast radius of a port failure.
   Ties break by PCI address, so the same input always gives the same answer.

Kubelet treats the answer as advice: it intersects it with what it may allocate and fills any
shortfall itself (pkg/kubelet/cm/devicemanager/manager.go, `devicesToAllocate`), while an error
fails the pod's admission. So asking for more than is available returns what exists; only a request
kubelet never makes (must-include outside available, size below the must-include count, an unknown
policy) is an AllocationError.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from deviceplugin.types import AllocationError, PoolDevice

POLICIES = ("pack", "spread")


def preferred(
    available: list[PoolDevice],
    must_include: list[str],
    size: int,
    allocated_per_pf: dict[str, int],
    policy: str,
) -> list[str]:
    """The device IDs to prefer for one container: must-include ones (sorted), then the picks."""
    if policy not in POLICIES:
        raise AllocationError(f"unknown allocation policy {policy!r} (want pack or spread)")
    by_id: dict[str, PoolDevice] = {}
    for dev in available:
        by_id.setdefault(dev.pci_address, dev)
    must = sorted(set(must_include))
    for dev_id in must:
        if dev_id not in by_id:
            raise AllocationError(f"must-include device {dev_id} is not among the available ones")
    if size < len(must):
        raise AllocationError(f"size {size} is smaller than the {len(must)} must-include devices")

    need = min(size, len(by_id)) - len(must)
    if need <= 0:
        return must
    chosen = {by_id[d] for d in must}
    rest = [by_id[d] for d in sorted(by_id) if d not in set(must)]
    load: Counter[str] = Counter(allocated_per_pf)
    for dev in chosen:
        load[dev.pf_pci_address] += 1

    picks: list[str] = []
    for group in _numa_groups(rest, chosen, need):
        picks += _pick(group, need - len(picks), load, policy)
        if len(picks) == need:
            break
    return must + picks


def _numa_groups(
    rest: list[PoolDevice], chosen: set[PoolDevice], need: int
) -> list[list[PoolDevice]]:
    """Candidate groups in the order to take from: one group when a known node fits."""
    groups: dict[int, list[PoolDevice]] = defaultdict(list)
    unknown: list[PoolDevice] = []
    for dev in rest:
        (unknown if dev.numa_node is None else groups[dev.numa_node]).append(dev)
    must_on = Counter(d.numa_node for d in chosen if d.numa_node is not None)

    def rank(node: int) -> tuple[int, int, int]:
        return (-must_on[node], -len(groups[node]), node)

    fitting = sorted((n for n in groups if len(groups[n]) >= need), key=rank)
    if fitting:
        return [groups[fitting[0]]]
    return [*(groups[n] for n in sorted(groups, key=rank)), unknown]


def _pick(devices: list[PoolDevice], n: int, load: Counter[str], policy: str) -> list[str]:
    """Up to n device IDs from one group; updates `load` with what it takes."""
    free: dict[str, list[PoolDevice]] = defaultdict(list)
    for dev in devices:  # already sorted by PCI address
        free[dev.pf_pci_address].append(dev)
    out: list[str] = []
    if policy == "pack":
        for pf in sorted(free, key=lambda p: (-load[p], -len(free[p]), p)):
            take = free[pf][: n - len(out)]
            out += [d.pci_address for d in take]
            load[pf] += len(take)
            if len(out) == n:
                break
        return out
    while len(out) < n and any(free.values()):
        pf = min((p for p in free if free[p]), key=lambda p: (load[p], p))
        out.append(free[pf].pop(0).pci_address)
        load[pf] += 1
    return out
