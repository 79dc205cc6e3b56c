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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deviceplugin.config import PoolSpec
from deviceplugin.pools import Assignment, assign, selects
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

    # -- inputs ---------------------------------------------------------------------------------
    def update(self, specs: list[PoolSpec], inventory: Inventory) -> None:
        """New config and/or inventory: recompute membership, remember who left."""
        now = self.clock()
        old = self.assignment.pools
        self.specs = {s.resource_name: s for s in specs}
        self.assignment = assign(specs, inventory)
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
        out = []
        for dev in self.devices(resource_name).values():
            out.append(self._state(spec, dev, self._health_reason(resource_name, dev)))
        for x in self.left.get(resource_name, {}).values():
            out.append(self._state(spec, x.device, x.reason))
        return sorted(out, key=lambda s: s.id)

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
    def _state(spec: PoolSpec, dev: PoolDevice, reason: str) -> DeviceState:
        numa = None if spec.exclude_topology else dev.numa_node
        return DeviceState(id=dev.pci_address, healthy=not reason, numa_node=numa, reason=reason)
