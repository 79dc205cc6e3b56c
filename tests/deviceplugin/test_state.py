"""PoolStates: health that flips both ways, lingering devices, and use across shared NSM pools."""

from __future__ import annotations

import pytest

from deviceplugin.config import PoolSpec, parse_config
from deviceplugin.state import PoolStates
from deviceplugin.types import DeviceState
from nicinventory import Inventory, SysfsReader
from nicinventory.fakesysfs import BuiltHost, VFSpec

GRACE = 60.0
ALLOC_GRACE = 30.0

E2 = [f"0000:3b:12.{i}" for i in range(4)]  # ens1f1 (0000:3b:00.1), all iavf, numa 0
X7 = [f"0000:af:02.{i}" for i in range(4)]  # ens5f0 (0000:af:00.0), iavf, link down, numa 1


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class World:
    """A sample host, a config and PoolStates on an injected clock."""

    def __init__(self, host: BuiltHost, config: str) -> None:
        self.host = host
        self.fs = host.sysfs
        self.clock = Clock()
        self.specs: list[PoolSpec] = parse_config(config, "test.yaml")
        self.states = PoolStates(grace=GRACE, alloc_grace=ALLOC_GRACE, clock=self.clock)
        self.rescan()

    def inventory(self) -> Inventory:
        return SysfsReader(self.fs.root).scan()

    def rescan(self, config: str | None = None) -> None:
        if config is not None:
            self.specs = parse_config(config, "test.yaml")
        self.states.update(self.specs, self.inventory())

    def state(self, pool: str) -> dict[str, DeviceState]:
        return {s.id: s for s in self.states.device_states(pool)}

    def health(self, pool: str) -> dict[str, str]:
        """Device -> "" when healthy, else its reason."""
        return {s.id: "" if s.healthy else s.reason for s in self.states.device_states(pool)}


E2_POOL = "resourceList: [{resourceName: e2, selectors: {pfNames: [ens1f1]}}]"
SHARED = """
nsm:
  pfs: [{pf: ens1f1, capabilities: [100g], serviceDomains: [example.com, other.org]}]
"""
A, B = "example.com/100g", "other.org/100g"


def test_device_states_are_sorted_and_healthy(sample_host: BuiltHost) -> None:
    w = World(sample_host, E2_POOL)
    states = w.states.device_states("intel.com/e2")
    assert states == [DeviceState(id=a, healthy=True, numa_node=0, reason="") for a in E2]
    assert w.states.device_states("intel.com/nosuch") == []


# -- link health -----------------------------------------------------------------------------------


def test_pf_link_down_then_up(sample_host: BuiltHost) -> None:
    w = World(sample_host, E2_POOL)
    w.fs.set_link("ens1f1", False)
    w.rescan()
    assert w.health("intel.com/e2") == {a: "PF ens1f1 has no carrier" for a in E2}
    assert w.states.why_unhealthy("intel.com/e2", E2[0]) == "PF ens1f1 has no carrier"
    # still members: kubelet keeps them, Unhealthy, and gets them back when the link returns
    assert set(w.states.devices("intel.com/e2")) == set(E2)
    w.fs.set_link("ens1f1", True)
    w.rescan()
    assert w.health("intel.com/e2") == {a: "" for a in E2}
    assert w.states.why_unhealthy("intel.com/e2", E2[0]) is None


def test_pf_link_up_then_down(sample_host: BuiltHost) -> None:
    w = World(sample_host, "resourceList: [{resourceName: x, selectors: {pfNames: [ens5f0]}}]")
    assert w.health("intel.com/x") == {a: "PF ens5f0 has no carrier" for a in X7}
    w.fs.set_link("ens5f0", True)
    w.rescan()
    assert w.health("intel.com/x") == {a: "" for a in X7}
    w.fs.set_link("ens5f0", False)
    w.rescan()
    assert w.health("intel.com/x") == {a: "PF ens5f0 has no carrier" for a in X7}


def test_link_down_affects_only_that_pf(sample_host: BuiltHost) -> None:
    w = World(sample_host, "resourceList: [{resourceName: e, selectors: {vendors: ['8086']}}]")
    w.fs.set_link("ens1f1", False)
    w.rescan()
    h = w.health("intel.com/e")
    assert {a for a, r in h.items() if r} == set(E2) | set(X7)
    assert h["0000:3b:02.0"] == ""


# -- topology --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("exclude", "numa"), [(False, 1), (True, None)])
def test_exclude_topology(sample_host: BuiltHost, exclude: bool, numa: int | None) -> None:
    config = f"""
    resourceList:
      - {{resourceName: cx, excludeTopology: {str(exclude).lower()}, selectors: {{pfNames: [ens3f0np0]}}}}
    """
    w = World(sample_host, config)
    states = w.states.device_states("intel.com/cx")
    assert len(states) == 6
    assert {s.numa_node for s in states} == {numa}


def test_exclude_topology_in_nsm_form(sample_host: BuiltHost) -> None:
    config = """
    nsm:
      pfs: [{pf: ens3f0np0, excludeTopology: true, capabilities: [100g], serviceDomains: [example.com]}]
    """
    w = World(sample_host, config)
    assert {s.numa_node for s in w.states.device_states(A)} == {None}


def test_lingering_device_also_drops_topology(sample_host: BuiltHost) -> None:
    config = """
    resourceList:
      - {resourceName: e2, excludeTopology: true, selectors: {pfNames: [ens1f1]}}
    """
    w = World(sample_host, config)
    w.fs.set_num_vfs("0000:3b:00.1", [VFSpec()] * 3)
    w.rescan()
    assert w.state("intel.com/e2")[E2[3]] == DeviceState(E2[3], False, None, "vanished")


# -- vanished VFs ----------------------------------------------------------------------------------


def test_vanished_vf_lingers_unhealthy_until_grace_passes(sample_host: BuiltHost) -> None:
    w = World(sample_host, E2_POOL)
    w.fs.set_num_vfs("0000:3b:00.1", [VFSpec()] * 2)
    w.rescan()
    assert w.health("intel.com/e2") == {E2[0]: "", E2[1]: "", E2[2]: "vanished", E2[3]: "vanished"}
    assert w.state("intel.com/e2")[E2[2]].numa_node == 0  # the last known NUMA node
    assert set(w.states.devices("intel.com/e2")) == set(E2[:2])  # Allocate cannot hand them out
    assert set(w.states.known_devices("intel.com/e2")) == set(E2)
    assert w.states.why_unhealthy("intel.com/e2", E2[3]) == "vanished"
    w.clock.advance(GRACE - 1)
    w.rescan()
    assert w.health("intel.com/e2")[E2[3]] == "vanished"
    w.clock.advance(1)
    w.rescan()
    assert w.health("intel.com/e2") == {E2[0]: "", E2[1]: ""}
    assert w.states.why_unhealthy("intel.com/e2", E2[3]) == "not a device of this resource"


def test_grace_counts_from_when_it_vanished_not_from_the_last_rescan(
    sample_host: BuiltHost,
) -> None:
    w = World(sample_host, E2_POOL)
    w.fs.set_num_vfs("0000:3b:00.1", [VFSpec()] * 3)
    w.rescan()
    for _ in range(5):
        w.clock.advance(GRACE / 5)
        w.rescan()
    assert E2[3] not in w.health("intel.com/e2")


def test_vanished_vf_is_kept_while_held(sample_host: BuiltHost) -> None:
    w = World(sample_host, E2_POOL)
    w.states.mark_allocated("intel.com/e2", [E2[3]])
    w.fs.set_num_vfs("0000:3b:00.1", [VFSpec()] * 2)
    w.rescan()
    w.clock.advance(GRACE * 10)
    w.rescan()
    assert w.health("intel.com/e2") == {E2[0]: "", E2[1]: "", E2[3]: "vanished"}
    # a pod still holds it: pod-resources lists it
    w.states.sync_in_use({E2[3]: "intel.com/e2"})
    w.rescan()
    assert w.health("intel.com/e2")[E2[3]] == "vanished"
    # the pod is gone: released, and the next pass drops it
    w.states.sync_in_use({})
    w.rescan()
    assert w.health("intel.com/e2") == {E2[0]: "", E2[1]: ""}


def test_vanished_vf_coming_back_is_healthy_again(sample_host: BuiltHost) -> None:
    w = World(sample_host, E2_POOL)
    w.fs.set_num_vfs("0000:3b:00.1", [VFSpec()] * 2)
    w.rescan()
    w.clock.advance(5)
    w.fs.set_num_vfs("0000:3b:00.1", [VFSpec()] * 4)
    w.rescan()
    states = w.states.device_states("intel.com/e2")
    assert [s.id for s in states] == E2  # once each
    assert all(s.healthy for s in states)
    assert set(w.states.devices("intel.com/e2")) == set(E2)


def test_all_vfs_vanish_when_sriov_is_turned_off(sample_host: BuiltHost) -> None:
    w = World(sample_host, E2_POOL)
    w.fs.set_num_vfs("0000:3b:00.1", [])
    w.rescan()
    assert w.health("intel.com/e2") == {a: "vanished" for a in E2}
    assert w.states.devices("intel.com/e2") == {}


# -- rebound VFs -----------------------------------------------------------------------------------

NETDEV_AND_VFIO = """
resourceList:
  - {resourceName: netdev, selectors: {drivers: [iavf], pfNames: [ens1f1]}}
  - {resourceName: dpdk, selectors: {drivers: [vfio-pci], pfNames: [ens1f1]}}
"""


def rebind(w: World, bdf: str, driver: str) -> None:
    w.fs.unbind(bdf)
    w.fs.bind(bdf, driver)
    w.rescan()


def test_vf_rebound_to_vfio_leaves_the_netdev_pool_and_joins_the_vfio_pool(
    sample_host: BuiltHost,
) -> None:
    w = World(sample_host, NETDEV_AND_VFIO)
    assert w.health("intel.com/dpdk") == {}
    rebind(w, E2[0], "vfio-pci")
    netdev = w.health("intel.com/netdev")
    assert netdev[E2[0]] == "no longer fits: driver vfio-pci not in [iavf]"
    assert [netdev[a] for a in E2[1:]] == ["", "", ""]
    assert E2[0] not in w.states.devices("intel.com/netdev")
    assert w.health("intel.com/dpdk") == {E2[0]: ""}
    assert w.states.devices("intel.com/dpdk")[E2[0]].driver == "vfio-pci"
    # back to iavf: Healthy again in netdev, and now the vfio pool lists it as gone
    rebind(w, E2[0], "iavf")
    assert w.health("intel.com/netdev")[E2[0]] == ""
    assert w.health("intel.com/dpdk") == {E2[0]: "no longer fits: driver iavf not in [vfio-pci]"}
    w.clock.advance(GRACE)
    w.rescan()
    assert w.health("intel.com/dpdk") == {}


def test_vf_rebound_ahead_of_its_pool_leaves_the_later_pool(sample_host: BuiltHost) -> None:
    # the vfio pool comes first this time: the reason is the same either way
    config = """
    resourceList:
      - {resourceName: dpdk, selectors: {drivers: [vfio-pci], pfNames: [ens1f1]}}
      - {resourceName: netdev, selectors: {drivers: [iavf], pfNames: [ens1f1]}}
    """
    w = World(sample_host, config)
    rebind(w, E2[1], "vfio-pci")
    assert w.health("intel.com/netdev")[E2[1]] == "no longer fits: driver vfio-pci not in [iavf]"
    assert w.health("intel.com/dpdk") == {E2[1]: ""}


def test_vf_unbound_leaves_its_pool(sample_host: BuiltHost) -> None:
    w = World(sample_host, NETDEV_AND_VFIO)
    w.fs.unbind(E2[2])
    w.rescan()
    reason = "no longer fits: driver none (unbound) not in [iavf]"
    assert w.health("intel.com/netdev")[E2[2]] == reason
    assert w.states.why_unhealthy("intel.com/netdev", E2[2]) == reason
    w.fs.bind(E2[2], "iavf")
    w.rescan()
    assert w.health("intel.com/netdev")[E2[2]] == ""


def test_vf_taken_by_a_new_earlier_pool(sample_host: BuiltHost) -> None:
    w = World(sample_host, E2_POOL)
    w.rescan(
        """
        resourceList:
          - {resourceName: first, selectors: {pciAddresses: ["0000:3b:12.0"]}}
          - {resourceName: e2, selectors: {pfNames: [ens1f1]}}
        """
    )
    assert w.health("intel.com/e2")[E2[0]] == "moved to an earlier pool"
    assert w.health("intel.com/first") == {E2[0]: ""}


# -- shared NSM pools ------------------------------------------------------------------------------


def test_allocated_through_one_shared_pool_is_unhealthy_in_the_other(
    sample_host: BuiltHost,
) -> None:
    w = World(sample_host, SHARED)
    assert w.health(A) == w.health(B) == {a: "" for a in E2}
    w.states.mark_allocated(A, [E2[0]])
    assert w.health(A)[E2[0]] == ""
    assert w.health(B)[E2[0]] == f"in use through {A}"
    assert w.states.why_unhealthy(A, E2[0]) is None
    assert w.states.why_unhealthy(B, E2[0]) == f"in use through {A}"
    assert [w.health(B)[a] for a in E2[1:]] == ["", "", ""]
    # a rescan changes nothing about it
    w.rescan()
    assert w.health(B)[E2[0]] == f"in use through {A}"


def test_in_use_wins_over_link_down_in_the_other_pool(sample_host: BuiltHost) -> None:
    w = World(sample_host, SHARED)
    w.states.mark_allocated(A, [E2[0]])
    w.fs.set_link("ens1f1", False)
    w.rescan()
    assert w.health(B)[E2[0]] == f"in use through {A}"
    assert w.health(A)[E2[0]] == "PF ens1f1 has no carrier"


def test_sync_in_use_releases_when_no_pod_lists_it(sample_host: BuiltHost) -> None:
    w = World(sample_host, SHARED)
    w.states.mark_allocated(A, [E2[0]])
    # the Allocate is recent: pod-resources may not list it yet
    w.clock.advance(ALLOC_GRACE - 1)
    w.states.sync_in_use({})
    assert w.health(B)[E2[0]] == f"in use through {A}"
    w.clock.advance(1)
    w.states.sync_in_use({})
    assert w.health(B)[E2[0]] == ""
    assert w.states.holder == {}


def test_sync_in_use_keeps_what_pods_list(sample_host: BuiltHost) -> None:
    w = World(sample_host, SHARED)
    w.states.mark_allocated(A, [E2[0], E2[1]])
    w.clock.advance(ALLOC_GRACE * 10)
    w.states.sync_in_use({E2[0]: A, E2[1]: A})
    assert w.health(B)[E2[0]] == w.health(B)[E2[1]] == f"in use through {A}"
    w.states.sync_in_use({E2[1]: A})  # the first pod went away
    assert w.health(B)[E2[0]] == ""
    assert w.health(B)[E2[1]] == f"in use through {A}"


def test_reallocation_restarts_the_alloc_grace(sample_host: BuiltHost) -> None:
    w = World(sample_host, SHARED)
    w.states.mark_allocated(A, [E2[0]])
    w.clock.advance(ALLOC_GRACE - 1)
    w.states.mark_allocated(B, [E2[0]])
    w.clock.advance(ALLOC_GRACE - 1)
    w.states.sync_in_use({})
    assert w.health(A)[E2[0]] == f"in use through {B}"
    assert w.health(B)[E2[0]] == ""


def test_sync_in_use_adopts_holders_after_a_restart(sample_host: BuiltHost) -> None:
    w = World(sample_host, SHARED)
    # a fresh PoolStates knows nothing of earlier Allocates; pod-resources does
    w.states.sync_in_use({E2[2]: B, "0000:99:00.0": "nvidia.com/gpu"})
    assert w.health(A)[E2[2]] == f"in use through {B}"
    assert w.health(B)[E2[2]] == ""
    assert w.states.holder == {E2[2]: B}  # resources that are not ours are ignored
    # adopted holders have no Allocate to wait for: released as soon as no pod lists them
    w.states.sync_in_use({})
    assert w.health(A)[E2[2]] == ""


def test_removing_a_pool_from_the_config_releases_its_holders(sample_host: BuiltHost) -> None:
    config = """
    nsm:
      pfs:
        - {pf: ens1f1, capabilities: [100g], serviceDomains: [example.com, other.org]}
        - {pf: ens1f1, capabilities: [100g], serviceDomains: [third.net]}
    """
    w = World(sample_host, config)
    w.states.mark_allocated(A, [E2[0]])
    assert w.health("third.net/100g")[E2[0]] == f"in use through {A}"
    w.rescan(
        """
        nsm:
          pfs: [{pf: ens1f1, capabilities: [100g], serviceDomains: [other.org, third.net]}]
        """
    )
    assert w.states.holder == {}
    assert w.health(B)[E2[0]] == ""
    assert w.health("third.net/100g")[E2[0]] == ""
    assert w.states.device_states(A) == []
    assert w.states.why_unhealthy(A, E2[0]) == "not a device of this resource"


# -- why_unhealthy and allocated_per_pf ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "device", "reason"),
    [
        ("intel.com/e2", E2[0], None),
        ("intel.com/e2", "0000:3b:02.0", "not a device of this resource"),
        ("intel.com/nosuch", E2[0], "not a device of this resource"),
        ("intel.com/x", X7[0], "PF ens5f0 has no carrier"),
        ("intel.com/x", E2[0], "not a device of this resource"),
    ],
)
def test_why_unhealthy(sample_host: BuiltHost, pool: str, device: str, reason: str | None) -> None:
    config = """
    resourceList:
      - {resourceName: e2, selectors: {pfNames: [ens1f1]}}
      - {resourceName: x, selectors: {pfNames: [ens5f0]}}
    """
    w = World(sample_host, config)
    assert w.states.why_unhealthy(pool, device) == reason


def test_allocated_per_pf(sample_host: BuiltHost) -> None:
    config = """
    resourceList:
      - {resourceName: e810, selectors: {devices: ["1889"], drivers: [iavf]}}
    nsm:
      pfs: [{pf: ens3f0np0, capabilities: [100g], serviceDomains: [example.com, other.org]}]
    """
    w = World(sample_host, config)
    assert w.states.allocated_per_pf() == {}
    w.states.mark_allocated("intel.com/e810", [E2[0], E2[1], "0000:3b:02.0"])
    w.states.mark_allocated(A, ["0000:86:02.0"])
    w.states.mark_allocated(B, ["0000:86:02.1"])
    assert w.states.allocated_per_pf() == {
        "0000:3b:00.1": 2,
        "0000:3b:00.0": 1,
        "0000:86:00.0": 2,  # counted once each, though every VF is in both shared pools
    }
    w.clock.advance(ALLOC_GRACE)
    w.states.sync_in_use({E2[1]: "intel.com/e810"})
    assert w.states.allocated_per_pf() == {"0000:3b:00.1": 1}
