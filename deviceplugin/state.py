"""Device health and use across pools: what every ListAndWatch list says, recomputed from data.

Health is state that flips both ways. A device is Unhealthy in a pool while:
- its PF has no carrier (the link is down: a pod would get a dead interface);
- it left the pool: the VF vanished (numvfs lowered, PF driver reloaded) or no longer fits it
  (rebound to another driver). It stays listed, Unhealthy, for `grace` seconds or as long as a pod
  holds it, so kubelet keeps its bookkeeping; if it comes back it is Healthy again;
- it is held through another pool. NSM-form pools share VFs (`example.com/100g` and
  `other.org/100g` may both reach one VF): once kubelet allocates it through one resource, the
  others report it Unhealthy, so kubelet cannot hand it out twice. It is released when the kubelet
  pod-resources API no longer lists it for any pod (see `sync_in_use`).
"""

from __future__ import annotations

import dataclasses
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deviceplugin.config import PoolSpec
from deviceplugin.pools import Assignment, assign_nic, merge, selects
from deviceplugin.types import DeviceState, PoolDevice
from nicinventory.model import NIC, Inventory


@dataclass(frozen=True)
class _Left:
    device: PoolDevice
    reason: str
    since: float


class PoolStates:
    """Owns pool membership, lingering devices and use; every method is plain data in, data out."""

    def __init__(
        self,
        grace: float = 60.0,
        alloc_grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.alloc_grace = (
            alloc_grace  # an Allocate not yet visible in pod-resources is kept this long
        )
        self.clock = clock
        self.specs: dict[str, PoolSpec] = {}
        self.assignment = Assignment()
        self.left: dict[str, dict[str, _Left]] = {}
        self.holder: dict[str, str] = {}  # VF PCI address -> resource name it was allocated through
        self.allocated_at: dict[str, float] = {}
        self._nics: dict[str, NIC] = {}
        # Each NIC's share of the assignment, kept with the NIC it came from (its link left out)
        # and the specs it was made for: see _assign.
        self._shares: dict[str, tuple[NIC, Assignment]] = {}
        self._shares_specs: list[PoolSpec] = []
        # Pool -> its last list by device, to re-use unchanged DeviceStates: see device_states.
        self._last_states: dict[str, dict[str, DeviceState]] = {}

    # -- inputs ---------------------------------------------------------------------------------
    def update(self, specs: list[PoolSpec], inventory: Inventory) -> None:
        """New config and/or inventory: recompute membership, remember who left."""
        now = self.clock()
        old = self.assignment.pools
        self.specs = {s.resource_name: s for s in specs}
        self._last_states = {n: v for n, v in self._last_states.items() if n in self.specs}
        self.assignment = self._assign(specs, inventory)
        self._nics = {n.pci_address: n for n in inventory.nics}
        present = {
            vf.pci_address: (n, vf)
            for n in inventory.nics
            for vf in (n.sriov.vfs if n.sriov else ())
        }
        left: dict[str, dict[str, _Left]] = {}
        for name in self.specs:
            cur = self.assignment.pools[name]
            kept = {a: x for a, x in self.left.get(name, {}).items() if a not in cur}
            for addr, dev in old.get(name, {}).items():
                if addr not in cur and addr not in kept:
                    if addr in present:
                        # Asked of this pool itself: a VF that now sits in another pool is
                        # not in `unpooled`, yet it may well no longer fit this one.
                        why = selects(self.specs[name], *present[addr])
                        reason = f"no longer fits: {why}" if why else "moved to an earlier pool"
                    else:
                        reason = "vanished"
                    kept[addr] = _Left(dev, reason, now)
            left[name] = {
                a: x
                for a, x in kept.items()
                if now - x.since < self.grace or self.holder.get(a) == name
            }
        self.left = left
        for addr in [a for a, pool in self.holder.items() if pool not in self.specs]:
            self._release(addr)

    def _assign(self, specs: list[PoolSpec], inventory: Inventory) -> Assignment:
        """`assign(specs, inventory)`, re-selecting only the NICs that changed. A PF's link is no
        input of selection, so a carrier flap (the commonest event) re-selects nothing, where a
        1,024-VF host takes milliseconds to re-select."""
        if specs != self._shares_specs:
            self._shares, self._shares_specs = {}, list(specs)
        shares: dict[str, tuple[NIC, Assignment]] = {}
        for nic in inventory.nics:
            key = dataclasses.replace(nic, link=None)
            kept = self._shares.get(nic.pci_address)
            share = kept[1] if kept is not None and kept[0] == key else assign_nic(specs, nic)
            shares[nic.pci_address] = (key, share)
        self._shares = shares
        return merge(specs, [share for _, share in shares.values()])

    def mark_allocated(self, resource_name: str, ids: list[str]) -> None:
        now = self.clock()
        for addr in ids:
            self.holder[addr] = resource_name
            self.allocated_at[addr] = now

    def sync_in_use(self, held: Mapping[str, str]) -> None:
        """`held`: VF PCI address -> resource name, as the pod-resources API lists them now.

        Devices pods still hold stay held; ones no pod holds are released, except those
        allocated moments ago that kubelet may not list yet.
        """
        now = self.clock()
        for addr, res in held.items():
            if res in self.specs:
                self.holder[addr] = res
        for addr in list(self.holder):
            if addr not in held and now - self.allocated_at.get(addr, -1e18) >= self.alloc_grace:
                self._release(addr)

    def _release(self, addr: str) -> None:
        self.holder.pop(addr, None)
        self.allocated_at.pop(addr, None)

    # -- outputs --------------------------------------------------------------------------------
    def devices(self, resource_name: str) -> dict[str, PoolDevice]:
        """Current members (not the ones that left): what Allocate may hand out."""
        return self.assignment.pools.get(resource_name, {})

    def known_devices(self, resource_name: str) -> dict[str, PoolDevice]:
        """Members and the devices that left but are still listed (Unhealthy)."""
        left = {a: x.device for a, x in self.left.get(resource_name, {}).items()}
        return {**left, **self.devices(resource_name)}

    def device_states(self, resource_name: str) -> list[DeviceState]:
        spec = self.specs.get(resource_name)
        if spec is None:
            return []
        # push() lists every pool after every change. A device whose state did not change keeps
        # its (immutable) DeviceState: cheaper than a new one, and comparing the list with the one
        # last sent is then mostly identity checks.
        prev = self._last_states.get(resource_name, {})
        out = []
        for dev in self.devices(resource_name).values():
            out.append(self._state(spec, dev, self._health_reason(resource_name, dev), prev))
        for x in self.left.get(resource_name, {}).values():
            out.append(self._state(spec, x.device, x.reason, prev))
        out.sort(key=_by_id)
        self._last_states[resource_name] = {s.id: s for s in out}
        return out

    def why_unhealthy(self, resource_name: str, addr: str) -> str | None:
        """None when the device may be allocated through this resource now."""
        if addr in self.left.get(resource_name, {}):
            return self.left[resource_name][addr].reason
        dev = self.devices(resource_name).get(addr)
        if dev is None:
            return "not a device of this resource"
        return self._health_reason(resource_name, dev) or None

    def allocated_per_pf(self) -> dict[str, int]:
        """PF PCI address -> VFs held, across every pool (for pack/spread preferences)."""
        out: dict[str, int] = {}
        for addr in self.holder:
            for devs in self.assignment.pools.values():
                if addr in devs:
                    pf = devs[addr].pf_pci_address
                    out[pf] = out.get(pf, 0) + 1
                    break
        return out

    def _health_reason(self, resource_name: str, dev: PoolDevice) -> str:
        holder = self.holder.get(dev.pci_address)
        if holder is not None and holder != resource_name:
            return f"in use through {holder}"
        nic = self._nics.get(dev.pf_pci_address)
        link = nic.link if nic else None
        if link is not None and (link.carrier is False or link.state in ("down", "lowerlayerdown")):
            return f"PF {dev.pf_ifname or dev.pf_pci_address} has no carrier"
        return ""

    @staticmethod
    def _state(
        spec: PoolSpec, dev: PoolDevice, reason: str, prev: Mapping[str, DeviceState]
    ) -> DeviceState:
        numa = None if spec.exclude_topology else dev.numa_node
        old = prev.get(dev.pci_address)
        if old is not None and old.reason == reason and old.numa_node == numa:
            return old  # `healthy` follows from `reason`
        return DeviceState(id=dev.pci_address, healthy=not reason, numa_node=numa, reason=reason)


_by_id = operator.attrgetter("id")
