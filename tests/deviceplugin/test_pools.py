"""Which VF goes to which pool: every selector, exclusivity, sharing, and why a VF is in no pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deviceplugin.config import parse_config
from deviceplugin.pools import Assignment, assign
from deviceplugin.types import PoolDevice
from nicinventory import Inventory, SysfsReader
from nicinventory.fakesysfs import BuiltHost, FakeSysfs, PFSpec, VFSpec

# The bundled sample host (nicinventory/fakesysfs/sample-host.yaml):
#   ens1f0    E810   0000:3b:00.0 numa 0  VFs 0000:3b:02.0-7: 0-5 iavf, 6 vfio-pci, 7 unbound
#   ens1f1    E810   0000:3b:00.1 numa 0  VFs 0000:3b:12.0-3: iavf
#   ens3f0np0 CX6-Dx 0000:86:00.0 numa 1  VFs 0000:86:02.0-5: 0-3 mlx5_core (RDMA), 4-5 vfio-pci
#   ens5f0    X710   0000:af:00.0 numa 1  VFs 0000:af:02.0-3: iavf; link down
#   ens7f0    82599  0000:d8:00.0         SR-IOV off


def vfs(prefix: str, indexes: range | list[int]) -> set[str]:
    return {f"{prefix}.{i}" for i in indexes}


E1 = vfs("0000:3b:02", range(8))
E1_IAVF = vfs("0000:3b:02", range(6))
E1_VFIO = {"0000:3b:02.6"}
E1_UNBOUND = {"0000:3b:02.7"}
E2 = vfs("0000:3b:12", range(4))
CX = vfs("0000:86:02", range(6))
CX_NET = vfs("0000:86:02", range(4))
CX_VFIO = vfs("0000:86:02", [4, 5])
X7 = vfs("0000:af:02", range(4))
ALL = E1 | E2 | CX | X7


def scan(host: BuiltHost | FakeSysfs) -> Inventory:
    root = host.sysfs.root if isinstance(host, BuiltHost) else host.root
    return SysfsReader(root).scan()


def pools(config: str, inventory: Inventory) -> Assignment:
    return assign(parse_config(config, "test.yaml"), inventory)


def one_pool(selectors: str, inventory: Inventory) -> tuple[set[str], Assignment]:
    """The VFs a single resourceList pool with these selectors takes, and the whole assignment."""
    a = pools(f"resourceList: [{{resourceName: p, selectors: {selectors}}}]", inventory)
    return set(a.pools["intel.com/p"]), a


def iommu_group(host: BuiltHost, bdf: str) -> int:
    link = os.readlink(os.path.join(host.sysfs.root, "bus/pci/devices", bdf, "iommu_group"))
    return int(os.path.basename(link))


# -- every selector field, on the sample host ------------------------------------------------------

SELECTORS = [
    ("empty", "{}", ALL),
    ("vendor-intel", "{vendors: ['8086']}", E1 | E2 | X7),
    ("vendor-mellanox", "{vendors: ['15b3']}", CX),
    ("vendor-upper-case", "{vendors: ['15B3']}", CX),
    ("vendors-both", "{vendors: ['8086', '15b3']}", ALL),
    ("vendor-none", "{vendors: ['1af4']}", set()),
    ("device-e810-vf", "{devices: ['1889']}", E1 | E2),
    ("devices-two", "{devices: ['154c', '101e']}", X7 | CX),
    ("device-pf-id", "{devices: ['1592']}", set()),  # a PF's device ID selects no VF
    ("driver-iavf", "{drivers: [iavf]}", E1_IAVF | E2 | X7),
    ("driver-vfio", "{drivers: [vfio-pci]}", E1_VFIO | CX_VFIO),
    ("driver-mlx5", "{drivers: [mlx5_core]}", CX_NET),
    ("drivers-two", "{drivers: [iavf, vfio-pci]}", E1_IAVF | E1_VFIO | E2 | X7 | CX_VFIO),
    ("driver-old-name", "{drivers: [i40evf]}", set()),
    (
        "pci-addresses",
        "{pciAddresses: ['0000:3b:02.1', '0000:86:02.5']}",
        {"0000:3b:02.1", "0000:86:02.5"},
    ),
    ("pci-address-upper", "{pciAddresses: ['0000:AF:02.3']}", {"0000:af:02.3"}),
    ("pci-address-of-pf", "{pciAddresses: ['0000:3b:00.0']}", set()),
    ("pf-name", "{pfNames: [ens1f0]}", E1),
    ("pf-name-range", "{pfNames: ['ens1f0#0-3']}", vfs("0000:3b:02", range(4))),
    ("pf-name-list", "{pfNames: ['ens1f0#0,6-7']}", vfs("0000:3b:02", [0, 6, 7])),
    ("pf-names-two", "{pfNames: ['ens1f0#1', ens1f1]}", {"0000:3b:02.1"} | E2),
    ("pf-name-range-past-end", "{pfNames: ['ens1f1#3-9']}", {"0000:3b:12.3"}),
    ("pf-name-range-none", "{pfNames: ['ens1f0#20-30']}", set()),
    ("pf-name-unknown", "{pfNames: [eth9]}", set()),
    ("pf-name-of-vf", "{pfNames: [ens1f0v0]}", set()),
    ("root-device", "{rootDevices: ['0000:3b:00.1']}", E2),
    ("root-device-range", "{rootDevices: ['0000:86:00.0#4-5']}", CX_VFIO),
    (
        "root-devices-two",
        "{rootDevices: ['0000:86:00.0#0', '0000:af:00.0#2-3']}",
        {"0000:86:02.0", "0000:af:02.2", "0000:af:02.3"},
    ),
    ("root-device-is-pf-name", "{rootDevices: [ens1f0]}", set()),
    ("link-ether", "{linkTypes: [ether]}", ALL),
    ("link-infiniband", "{linkTypes: [infiniband]}", set()),
    ("rdma", "{isRdma: true}", CX_NET),
    ("rdma-false-filters-nothing", "{isRdma: false}", ALL),
    ("vhost-net-filters-nothing", "{needVhostNet: true}", ALL),
    (
        "all-must-match",
        "{vendors: ['8086'], drivers: [iavf], pfNames: ['ens1f0#2-7']}",
        vfs("0000:3b:02", range(2, 6)),
    ),
    ("all-must-match-none", "{vendors: ['15b3'], pfNames: [ens1f0]}", set()),
    ("rdma-and-vfio", "{isRdma: true, drivers: [vfio-pci]}", set()),
]


@pytest.mark.parametrize(
    ("selectors", "expected"), [s[1:] for s in SELECTORS], ids=[s[0] for s in SELECTORS]
)
def test_selector_field_selects_and_rejects(
    sample_host: BuiltHost, selectors: str, expected: set[str]
) -> None:
    taken, a = one_pool(selectors, scan(sample_host))
    assert taken == expected
    assert set(a.unpooled) == ALL - expected
    assert all(len(reasons) == 1 for reasons in a.unpooled.values())


REASONS = [
    ("{vendors: ['15b3']}", "0000:3b:02.0", "vendor 8086 not in [15b3]"),
    ("{vendors: ['8086', '1af4']}", "0000:86:02.0", "vendor 15b3 not in [1af4, 8086]"),
    ("{devices: ['101e']}", "0000:3b:12.0", "device 1889 not in [101e]"),
    ("{drivers: [iavf]}", "0000:3b:02.7", "driver none (unbound) not in [iavf]"),
    ("{drivers: [iavf]}", "0000:3b:02.6", "driver vfio-pci not in [iavf]"),
    ("{drivers: [mlx5_core, iavf]}", "0000:86:02.4", "driver vfio-pci not in [iavf, mlx5_core]"),
    ("{pciAddresses: ['0000:3b:02.1']}", "0000:3b:02.0", "PCI address not listed in pciAddresses"),
    ("{pfNames: ['ens1f0#0-3']}", "0000:3b:02.4", "PF ens1f0 VF 4 not in pfNames [ens1f0#0-3]"),
    ("{pfNames: ['ens1f0#0-3']}", "0000:3b:12.0", "PF ens1f1 VF 0 not in pfNames [ens1f0#0-3]"),
    (
        "{pfNames: ['ens1f0#3,0-2', ens1f1]}",
        "0000:86:02.0",
        "PF ens3f0np0 VF 0 not in pfNames [ens1f0#0-3, ens1f1]",
    ),
    (
        "{rootDevices: ['0000:3b:00.0#0,2']}",
        "0000:3b:02.1",
        "PF 0000:3b:00.0 VF 1 not in rootDevices [0000:3b:00.0#0,2]",
    ),
    ("{linkTypes: [infiniband]}", "0000:af:02.0", "link type ether not in [infiniband]"),
    ("{isRdma: true}", "0000:86:02.4", "not RDMA capable (isRdma)"),
    ("{isRdma: true}", "0000:3b:02.0", "not RDMA capable (isRdma)"),
    # the first field that fails is the one named
    ("{vendors: ['15b3'], drivers: [vfio-pci]}", "0000:3b:02.0", "vendor 8086 not in [15b3]"),
    ("{vendors: ['8086'], drivers: [vfio-pci]}", "0000:3b:02.0", "driver iavf not in [vfio-pci]"),
]


@pytest.mark.parametrize(("selectors", "vf", "reason"), REASONS)
def test_unpooled_reason_is_readable(
    sample_host: BuiltHost, selectors: str, vf: str, reason: str
) -> None:
    _, a = one_pool(selectors, scan(sample_host))
    assert a.unpooled[vf] == [("intel.com/p", reason)]
    assert a.pools_of(vf) == []


def test_link_type_infiniband(tmp_path: Path) -> None:
    fs = FakeSysfs(str(tmp_path / "sys"))
    fs.add_pf(PFSpec("cx6dx", "0000:86:00.0", "ib0", vfs=[VFSpec()] * 2))
    fs.add_pf(PFSpec("e810", "0000:3b:00.0", "ens1f0", vfs=[VFSpec()] * 2))
    # An InfiniBand port: ARPHRD_INFINIBAND (32) in the netdev's type.
    (Path(os.path.realpath(tmp_path / "sys/class/net/ib0")) / "type").write_text("32\n")
    inv = scan(fs)
    assert [n.link_type for n in inv.nics] == ["ether", "infiniband"]
    ib = {"0000:86:02.0", "0000:86:02.1"}
    eth = {"0000:3b:02.0", "0000:3b:02.1"}
    assert one_pool("{linkTypes: [infiniband]}", inv)[0] == ib
    assert one_pool("{linkTypes: [ether]}", inv)[0] == eth
    assert one_pool("{linkTypes: [ether, infiniband]}", inv)[0] == ib | eth
    _, a = one_pool("{linkTypes: [ether]}", inv)
    assert a.unpooled["0000:86:02.0"] == [("intel.com/p", "link type infiniband not in [ether]")]


# -- drivers and unbound VFs -----------------------------------------------------------------------


def test_drivers_selector_never_takes_an_unbound_vf(sample_host: BuiltHost) -> None:
    every_driver = "{drivers: [iavf, vfio-pci, mlx5_core, ixgbevf, i40evf]}"
    taken, a = one_pool(every_driver, scan(sample_host))
    assert taken == ALL - E1_UNBOUND
    assert a.unpooled["0000:3b:02.7"] == [
        ("intel.com/p", "driver none (unbound) not in [i40evf, iavf, ixgbevf, mlx5_core, vfio-pci]")
    ]


def test_unbinding_a_vf_takes_it_out_of_a_drivers_pool(sample_host: BuiltHost) -> None:
    sample_host.sysfs.unbind("0000:3b:12.1")
    taken, a = one_pool("{drivers: [iavf]}", scan(sample_host))
    assert "0000:3b:12.1" not in taken
    assert a.unpooled["0000:3b:12.1"] == [("intel.com/p", "driver none (unbound) not in [iavf]")]


def test_nsm_pools_skip_unbound_vfs(sample_host: BuiltHost) -> None:
    a = pools(
        "nsm: {pfs: [{pf: ens1f0, capabilities: [100g], serviceDomains: [example.com]}]}",
        scan(sample_host),
    )
    assert set(a.pools["example.com/100g"]) == E1 - E1_UNBOUND
    assert a.unpooled["0000:3b:02.7"] == [("example.com/100g", "unbound (no driver)")]


# -- selector lists, exclusivity, sharing ----------------------------------------------------------


def test_selectors_list_is_any_of(sample_host: BuiltHost) -> None:
    taken, a = one_pool("[{pfNames: ['ens1f0#0-1']}, {drivers: [vfio-pci]}]", scan(sample_host))
    assert taken == vfs("0000:3b:02", [0, 1]) | E1_VFIO | CX_VFIO
    # a VF no selector takes says what each selector wanted
    assert a.unpooled["0000:3b:12.0"] == [
        (
            "intel.com/p",
            "PF ens1f1 VF 0 not in pfNames [ens1f0#0-1] / driver iavf not in [vfio-pci]",
        )
    ]


def test_selectors_list_same_reason_is_said_once(sample_host: BuiltHost) -> None:
    _, a = one_pool("[{vendors: ['15b3']}, {vendors: ['15b3'], isRdma: true}]", scan(sample_host))
    assert a.unpooled["0000:3b:02.0"] == [("intel.com/p", "vendor 8086 not in [15b3]")]


def test_first_resource_list_pool_wins(sample_host: BuiltHost) -> None:
    inv = scan(sample_host)
    config = """
    resourceList:
      - {resourceName: netdev, selectors: {drivers: [iavf]}}
      - {resourceName: ens1f0, selectors: {pfNames: [ens1f0]}}
    """
    a = pools(config, inv)
    assert set(a.pools["intel.com/netdev"]) == E1_IAVF | E2 | X7
    assert set(a.pools["intel.com/ens1f0"]) == E1_VFIO | E1_UNBOUND
    for vf in ALL - CX:
        assert len(a.pools_of(vf)) == 1, vf
    # the other way round, the PF pool takes all of ens1f0 first
    swapped = """
    resourceList:
      - {resourceName: ens1f0, selectors: {pfNames: [ens1f0]}}
      - {resourceName: netdev, selectors: {drivers: [iavf]}}
    """
    b = pools(swapped, inv)
    assert set(b.pools["intel.com/ens1f0"]) == E1
    assert set(b.pools["intel.com/netdev"]) == E2 | X7
    assert b.pools_of("0000:3b:02.0") == ["intel.com/ens1f0"]


def test_a_vf_in_an_earlier_pool_has_no_reason_for_the_later_ones(sample_host: BuiltHost) -> None:
    config = """
    resourceList:
      - {resourceName: a, selectors: {pfNames: [ens1f0]}}
      - {resourceName: b, selectors: {pfNames: [ens1f1]}}
    """
    a = pools(config, scan(sample_host))
    assert "0000:3b:02.0" not in a.unpooled and "0000:3b:12.0" not in a.unpooled


def test_nsm_pools_share_a_vf(sample_host: BuiltHost) -> None:
    config = """
    nsm:
      pfs:
        - {pf: ens1f1, capabilities: [100g], serviceDomains: [example.com, other.org]}
        - {pf: "0000:3b:00.0", capabilities: [100g, fast], serviceDomains: [example.com]}
    """
    a = pools(config, scan(sample_host))
    assert set(a.pools) == {"example.com/100g", "other.org/100g", "example.com/fast"}
    assert set(a.pools["example.com/100g"]) == E2 | E1 - E1_UNBOUND  # two PFs merged
    assert set(a.pools["other.org/100g"]) == E2
    assert set(a.pools["example.com/fast"]) == E1 - E1_UNBOUND
    assert a.pools_of("0000:3b:12.0") == ["example.com/100g", "other.org/100g"]
    assert a.pools_of("0000:3b:02.0") == ["example.com/100g", "example.com/fast"]


def test_nsm_pf_by_upper_case_address(sample_host: BuiltHost) -> None:
    config = (
        "nsm: {pfs: [{pf: '0000:3B:00.1', capabilities: [100g], serviceDomains: [example.com]}]}"
    )
    a = pools(config, scan(sample_host))
    assert set(a.pools["example.com/100g"]) == E2


def test_nsm_vf_ranges_and_drivers(sample_host: BuiltHost) -> None:
    config = """
    nsm:
      pfs:
        - {pf: ens1f0, vfs: "4-7", drivers: [iavf], capabilities: [100g], serviceDomains: [example.com]}
    """
    a = pools(config, scan(sample_host))
    assert set(a.pools["example.com/100g"]) == {"0000:3b:02.4", "0000:3b:02.5"}
    assert a.unpooled["0000:3b:02.6"] == [("example.com/100g", "driver vfio-pci not in [iavf]")]
    assert a.unpooled["0000:3b:02.0"] == [
        ("example.com/100g", "PF ens1f0 VF 0 not in pfNames [ens1f0#4-7]")
    ]


def test_resource_list_beats_nsm(sample_host: BuiltHost) -> None:
    # nsm written first: the resourceList pool still claims before the NSM pools share the rest
    config = """
    nsm:
      pfs: [{pf: ens1f0, capabilities: [100g], serviceDomains: [example.com, other.org]}]
    resourceList:
      - {resourceName: low, selectors: {pfNames: ["ens1f0#0-3"]}}
    """
    a = pools(config, scan(sample_host))
    low = vfs("0000:3b:02", range(4))
    assert set(a.pools["intel.com/low"]) == low
    rest = vfs("0000:3b:02", [4, 5, 6])
    assert set(a.pools["example.com/100g"]) == rest
    assert set(a.pools["other.org/100g"]) == rest
    for vf in low:
        assert a.pools_of(vf) == ["intel.com/low"]


def test_unpooled_vf_has_one_reason_per_pool(sample_host: BuiltHost) -> None:
    config = """
    resourceList:
      - {resourceName: dpdk, selectors: {drivers: [vfio-pci]}}
      - {resourceName: rdma, resourcePrefix: mellanox.com, selectors: {isRdma: true}}
    nsm:
      pfs: [{pf: ens1f0, capabilities: [100g], serviceDomains: [example.com]}]
    """
    a = pools(config, scan(sample_host))
    assert a.unpooled["0000:af:02.0"] == [
        ("intel.com/dpdk", "driver iavf not in [vfio-pci]"),
        ("mellanox.com/rdma", "not RDMA capable (isRdma)"),
        ("example.com/100g", "PF ens5f0 VF 0 not in pfNames [ens1f0]"),
    ]
    assert a.unpooled["0000:3b:02.7"] == [
        ("intel.com/dpdk", "driver none (unbound) not in [vfio-pci]"),
        ("mellanox.com/rdma", "not RDMA capable (isRdma)"),
        ("example.com/100g", "unbound (no driver)"),
    ]
    pooled = set().union(*(set(d) for d in a.pools.values()))
    assert set(a.unpooled) == ALL - pooled
    assert all(len(r) == 3 for r in a.unpooled.values())


def test_empty_selectors_list_takes_nothing(sample_host: BuiltHost) -> None:
    taken, a = one_pool("[]", scan(sample_host))
    assert taken == set()
    assert a.unpooled["0000:3b:02.0"] == [("intel.com/p", "no selectors")]


def test_no_pools_leaves_every_vf_unpooled_without_reasons(sample_host: BuiltHost) -> None:
    a = assign([], scan(sample_host))
    assert a.pools == {}
    assert a.unpooled == {vf: [] for vf in ALL}


def test_assignment_is_pure_and_repeatable(sample_host: BuiltHost) -> None:
    inv = scan(sample_host)
    config = "resourceList: [{resourceName: a, selectors: {vendors: ['8086']}}]"
    assert pools(config, inv) == pools(config, inv)


# -- the upstream README config on the sample host -------------------------------------------------


def test_upstream_style_config_on_the_sample_host(sample_host: BuiltHost) -> None:
    config = """
    resourceList:
      - resourceName: intel_sriov_netdevice
        selectors: {vendors: ["8086"], devices: ["154c", "10ed", "1889"],
                    drivers: [i40evf, ixgbevf, iavf]}
      - resourceName: intel_sriov_dpdk
        selectors: {vendors: ["8086"], devices: ["154c", "10ed", "1889"], drivers: [vfio-pci],
                    needVhostNet: true}
      - resourceName: mlnx_sriov_rdma
        resourcePrefix: mellanox.com
        selectors: [{vendors: ["15b3"], devices: ["101e"], drivers: [mlx5_core], isRdma: true}]
    """
    a = pools(config, scan(sample_host))
    assert {k: set(v) for k, v in a.pools.items()} == {
        "intel.com/intel_sriov_netdevice": E1_IAVF | E2 | X7,
        "intel.com/intel_sriov_dpdk": E1_VFIO,
        "mellanox.com/mlnx_sriov_rdma": CX_NET,
    }
    assert set(a.unpooled) == E1_UNBOUND | CX_VFIO


# -- what a pool device carries --------------------------------------------------------------------


def test_pool_device_fields(sample_host: BuiltHost) -> None:
    a = pools("resourceList: [{resourceName: all}]", scan(sample_host))
    devs = a.pools["intel.com/all"]
    assert devs["0000:86:02.1"] == PoolDevice(
        pci_address="0000:86:02.1",
        pf_pci_address="0000:86:00.0",
        pf_ifname="ens3f0np0",
        vf_index=1,
        vendor_id="15b3",
        device_id="101e",
        driver="mlx5_core",
        ifname="ens3f0np0v1",
        numa_node=1,
        iommu_group=iommu_group(sample_host, "0000:86:02.1"),
        rdma=True,
    )
    assert devs["0000:3b:02.6"] == PoolDevice(
        pci_address="0000:3b:02.6",
        pf_pci_address="0000:3b:00.0",
        pf_ifname="ens1f0",
        vf_index=6,
        vendor_id="8086",
        device_id="1889",
        driver="vfio-pci",
        ifname=None,
        numa_node=0,
        iommu_group=iommu_group(sample_host, "0000:3b:02.6"),
        rdma=False,
    )
    unbound = devs["0000:3b:02.7"]
    assert (unbound.driver, unbound.ifname, unbound.vf_index) == (None, None, 7)
    # every VF has its own IOMMU group
    groups = [d.iommu_group for d in devs.values()]
    assert None not in groups and len(set(groups)) == len(groups)
    # and the vfio VFs of the CX6 are not RDMA devices (no mlx5 driver bound)
    assert not devs["0000:86:02.4"].rdma


def test_pool_device_unknown_numa_and_pf_without_netdev(tmp_path: Path) -> None:
    fs = FakeSysfs(str(tmp_path / "sys"))
    fs.add_pf(PFSpec("x710", "0000:af:00.0", "ens5f0", numa_node=-1, vfs=[VFSpec()]))
    fs.add_pf(PFSpec("e810", "0000:3b:00.0", None, numa_node=1, vfs=[VFSpec()] * 2))
    inv = scan(fs)
    a = pools("resourceList: [{resourceName: all}]", inv)
    devs = a.pools["intel.com/all"]
    assert devs["0000:af:02.0"].numa_node is None
    assert devs["0000:af:02.0"].pf_ifname == "ens5f0"
    assert devs["0000:3b:02.0"].pf_ifname is None
    assert devs["0000:3b:02.0"].numa_node == 1
    assert devs["0000:3b:02.0"].ifname == "vf0"  # a VF of a PF without netdev gets a plain name
    # a PF without netdev has no name to match in pfNames, but rootDevices still finds it
    assert one_pool("{pfNames: [ens1f0]}", inv)[0] == set()
    assert one_pool("{rootDevices: ['0000:3b:00.0#1']}", inv)[0] == {"0000:3b:02.1"}


def test_vfs_of_a_built_host_follow_numvfs(tmp_path: Path) -> None:
    fs = FakeSysfs(str(tmp_path / "sys"))
    fs.add_pf(PFSpec("e810", "0000:3b:00.0", "ens1f0", vfs=[VFSpec()] * 4))
    assert one_pool("{pfNames: ['ens1f0#2-9']}", scan(fs))[0] == {"0000:3b:02.2", "0000:3b:02.3"}
    fs.set_num_vfs("0000:3b:00.0", [VFSpec()] * 8)
    assert one_pool("{pfNames: ['ens1f0#2-9']}", scan(fs))[0] == vfs("0000:3b:02", range(2, 8))
    fs.set_num_vfs("0000:3b:00.0", [])
    taken, a = one_pool("{pfNames: [ens1f0]}", scan(fs))
    assert taken == set() and a.unpooled == {}
