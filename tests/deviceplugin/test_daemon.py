"""`sriov-device-plugin` end to end, as a user runs it: the daemon a real subprocess on a fake sysfs
host, the kubelet stand-in on real unix sockets, real gRPC.

This file: both config formats, health pushed as new lists, hot changes without a restart (VFs
added, numvfs lowered, driver rebound, config edited, a ConfigMap's symlink swap) and bad configs.
test_daemon_lifecycle.py: restarts, registration paths, Allocate, shared pools, metrics, `pools`.
Every wait is bounded; no test asserts on time.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import grpc
import pytest

from deviceplugin.server import default_socket_name
from nicinventory.fakesysfs import VFSpec
from tests.deviceplugin.daemon import (
    CX6_VFS,
    ENS1F0_VFS,
    ENS1F1,
    ENS1F1_VFS,
    NSM_CONFIG,
    NSM_POOLS,
    X710_VFS,
    Node,
    healthy,
    inode,
    rl,
    unhealthy,
    wait_registered,
)

# An SR-IOV network device plugin config as users have it in their ConfigMap, unchanged (upstream
# README style: selectors as one object, default prefix intel.com, excludeTopology per resource).
UPSTREAM_CONFIG = """{
    "resourceList": [
        {
            "resourceName": "intel_sriov_netdevice",
            "selectors": {
                "vendors": ["8086"],
                "devices": ["154c", "10ed", "1889"],
                "drivers": ["i40evf", "ixgbevf", "iavf"]
            }
        },
        {
            "resourceName": "intel_sriov_dpdk",
            "resourcePrefix": "intel.com",
            "deviceType": "netDevice",
            "selectors": [{
                "vendors": ["8086"],
                "devices": ["154c", "10ed", "1889"],
                "drivers": ["vfio-pci"],
                "pfNames": ["ens1f0#6-7"]
            }]
        },
        {
            "resourceName": "mlnx_sriov_rdma",
            "resourcePrefix": "mellanox.com",
            "excludeTopology": true,
            "selectors": {
                "vendors": ["15b3"],
                "devices": ["101e"],
                "drivers": ["mlx5_core"],
                "isRdma": true
            }
        }
    ]
}
"""


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    try:
        yield n
    finally:
        n.close()


# -- both config formats ------------------------------------------------------------------------


def test_upstream_resource_list_config_unchanged(node: Node) -> None:
    kubelet = node.kubelet()
    node.daemon(node.write("config.json", UPSTREAM_CONFIG))
    lists = wait_registered(
        kubelet,
        {
            "intel.com/intel_sriov_netdevice",
            "intel.com/intel_sriov_dpdk",
            "mellanox.com/mlnx_sriov_rdma",
        },
    )
    assert lists["intel.com/intel_sriov_netdevice"] == {
        **healthy(*ENS1F0_VFS[:6], *ENS1F1_VFS),
        **unhealthy(*X710_VFS, numa=1),  # ens5f0 has no carrier
    }
    assert lists["intel.com/intel_sriov_dpdk"] == healthy(ENS1F0_VFS[6])  # VF 7 is unbound
    # excludeTopology: no NUMA node sent
    assert lists["mellanox.com/mlnx_sriov_rdma"] == healthy(*CX6_VFS[:4], numa=None)
    for r in lists:
        assert kubelet.endpoint_socket(r) == str(node.kubelet_dir / default_socket_name(r))


def test_nsm_form_config(node: Node) -> None:
    kubelet = node.kubelet()
    node.daemon(node.write("config.yaml", NSM_CONFIG))
    lists = wait_registered(kubelet, NSM_POOLS)
    # bound VFs only (VF 7 of ens1f0 is unbound), whatever their driver
    assert lists["example.com/100g"] == healthy(*ENS1F0_VFS[:7], *ENS1F1_VFS)
    assert lists["other.org/100g"] == healthy(*ENS1F0_VFS[:7])
    assert lists["example.com/100g-rdma"] == healthy(*CX6_VFS, numa=None)
    assert lists["example.com/10g"] == unhealthy(*X710_VFS, numa=1)


# -- health -------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["sighup", "resync"])
def test_pf_link_down_then_up_is_pushed_as_new_lists(node: Node, via: str) -> None:
    kubelet = node.kubelet()
    d = node.daemon(node.write("config.yaml", NSM_CONFIG), resync=60.0 if via == "sighup" else 0.3)
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()

    def poke() -> None:
        if via == "sighup":
            d.hup()

    node.sysfs.set_link("ens1f1", up=False)
    poke()
    kubelet.wait_for_devices(
        "example.com/100g",
        lambda devs: devs == {**healthy(*ENS1F0_VFS[:7]), **unhealthy(*ENS1F1_VFS)},
    )
    node.sysfs.set_link("ens5f0", up=True)  # the x710 comes up: its pool turns Healthy
    node.sysfs.set_link("ens1f1", up=True)
    poke()
    kubelet.wait_for_devices(
        "example.com/100g", lambda devs: devs == healthy(*ENS1F0_VFS[:7], *ENS1F1_VFS)
    )
    kubelet.wait_for_devices("example.com/10g", lambda devs: devs == healthy(*X710_VFS, numa=1))
    assert kubelet.devices("other.org/100g") == healthy(*ENS1F0_VFS[:7])


# -- hot changes ----------------------------------------------------------------------------------


def test_vfs_added_join_their_pool(node: Node) -> None:
    kubelet = node.kubelet()
    d = node.daemon(node.write("config.yaml", NSM_CONFIG))
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    added = node.sysfs.set_num_vfs(ENS1F1, [VFSpec() for _ in range(6)])
    assert added[:4] == tuple(ENS1F1_VFS)
    d.hup()
    kubelet.wait_for_devices(
        "example.com/100g", lambda devs: devs == healthy(*ENS1F0_VFS[:7], *added)
    )
    assert kubelet.devices("other.org/100g") == healthy(*ENS1F0_VFS[:7])


def test_numvfs_lowered_vfs_turn_unhealthy_then_go(node: Node) -> None:
    kubelet = node.kubelet()
    # resync 1 s: also how long a vanished VF stays listed (Unhealthy) before it goes
    d = node.daemon(node.write("config.yaml", NSM_CONFIG), resync=1.0)
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    node.sysfs.set_num_vfs(ENS1F1, [VFSpec(), VFSpec()])
    d.hup()
    kept, gone = ENS1F1_VFS[:2], ENS1F1_VFS[2:]
    kubelet.wait_for_devices(
        "example.com/100g",
        lambda devs: devs == {**healthy(*ENS1F0_VFS[:7], *kept), **unhealthy(*gone)},
    )
    kubelet.wait_for_devices(
        "example.com/100g", lambda devs: devs == healthy(*ENS1F0_VFS[:7], *kept)
    )


def test_numvfs_lowered_vanished_vf_is_refused_by_allocate(node: Node) -> None:
    kubelet = node.kubelet()
    d = node.daemon(node.write("config.yaml", NSM_CONFIG))  # resync 60 s: it stays listed
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    node.sysfs.set_num_vfs(ENS1F1, [VFSpec(), VFSpec()])
    d.hup()
    kubelet.wait_for_devices(
        "example.com/100g", lambda devs: devs[ENS1F1_VFS[3]].health == "Unhealthy"
    )
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate("example.com/100g", [ENS1F1_VFS[3]])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ENS1F1_VFS[3] in err.value.details() and "vanished" in err.value.details()


def test_driver_rebound_leaves_one_pool_and_joins_another(node: Node) -> None:
    kubelet = node.kubelet()
    config = rl(
        ("e810_netdev", {"drivers": ["iavf"], "pfNames": ["ens1f0"]}),
        ("e810_vfio", {"drivers": ["vfio-pci"], "pfNames": ["ens1f0"]}),
    )
    d = node.daemon(node.write("config.json", config))
    lists = wait_registered(kubelet, {"intel.com/e810_netdev", "intel.com/e810_vfio"})
    assert lists["intel.com/e810_netdev"] == healthy(*ENS1F0_VFS[:6])
    assert lists["intel.com/e810_vfio"] == healthy(ENS1F0_VFS[6])
    d.wait_serving()

    vf = ENS1F0_VFS[0]
    node.sysfs.unbind(vf)
    node.sysfs.bind(vf, "vfio-pci")
    d.hup()
    kubelet.wait_for_devices(
        "intel.com/e810_netdev",
        lambda devs: devs == {**unhealthy(vf), **healthy(*ENS1F0_VFS[1:6])},
    )
    kubelet.wait_for_devices("intel.com/e810_vfio", lambda devs: devs == healthy(vf, ENS1F0_VFS[6]))
    # Allocate follows: vfio device nodes through the new pool, an error naming it in the old
    resp = kubelet.allocate("intel.com/e810_vfio", [vf])
    group = node.iommu_group(vf)
    assert [(s.host_path, s.container_path, s.permissions) for s in resp.devices] == [
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
        (f"/dev/vfio/{group}", f"/dev/vfio/{group}", "rw"),
    ]
    assert resp.envs["PCIDEVICE_INTEL_COM_E810_VFIO"] == vf
    info = json.loads(resp.envs["PCIDEVICE_INTEL_COM_E810_VFIO_INFO"])
    assert info[vf]["vfio"] == {"mount": "/dev/vfio/vfio", "dev-mount": f"/dev/vfio/{group}"}
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate("intel.com/e810_netdev", [vf])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert vf in err.value.details() and "no longer fits" in err.value.details()


KEEP = ("keep", {"drivers": ["iavf"], "pfNames": ["ens1f0"]})
GONE = ("gone", {"pfNames": ["ens1f1"]})
NEW = ("new", {"pfNames": ["ens5f0"]})


def test_config_edit_reconciles_pools_by_difference(node: Node) -> None:
    kubelet = node.kubelet()
    config = node.write("config.json", rl(KEEP, GONE))
    d = node.daemon(config)
    wait_registered(kubelet, {"intel.com/keep", "intel.com/gone"})
    d.wait_serving()
    keep_sock = node.kubelet_dir / default_socket_name("intel.com/keep")
    gone_sock = node.kubelet_dir / default_socket_name("intel.com/gone")
    keep_inode = inode(keep_sock)
    watch = node.watch(keep_sock)  # a second stream on the unchanged pool
    watch.wait_list(lambda lst: len(lst) == 6, "first list of intel.com/keep")
    kubelet.allocate("intel.com/gone", [ENS1F1_VFS[0]])
    gone_info = node.devinfo_dir / f"intel.com-gone-{ENS1F1_VFS[0]}-device.json"
    assert gone_info.exists()

    node.write("config.json", rl(KEEP, NEW))
    d.hup()
    wait_registered(kubelet, {"intel.com/keep", "intel.com/new"})
    assert kubelet.wait_disconnected("intel.com/gone") == grpc.StatusCode.OK
    assert not gone_sock.exists()
    assert not gone_info.exists()  # a removed pool takes its device-info files along
    assert kubelet.devices("intel.com/new") == unhealthy(*X710_VFS, numa=1)
    # the unchanged pool: same socket file, never re-registered, its streams still running
    assert inode(keep_sock) == keep_inode
    assert [a.resource for a in kubelet.attempts if a.accepted].count("intel.com/keep") == 1
    assert not watch.ended
    node.sysfs.set_link("ens1f0", up=False)
    d.hup()
    watch.wait_list(lambda lst: set(lst.values()) == {"Unhealthy"}, "keep's list, link down")
    kubelet.wait_for_devices("intel.com/keep", lambda devs: devs == unhealthy(*ENS1F0_VFS[:6]))
    assert not watch.ended and inode(keep_sock) == keep_inode


def test_pool_changed_in_place_keeps_its_socket_and_stream(node: Node) -> None:
    kubelet = node.kubelet()
    config = node.write("config.json", rl(KEEP))
    d = node.daemon(config)
    wait_registered(kubelet, {"intel.com/keep"})
    d.wait_serving()
    sock = node.kubelet_dir / default_socket_name("intel.com/keep")
    before = inode(sock)
    watch = node.watch(sock)
    watch.wait_list(lambda lst: len(lst) == 6, "first list")
    changed = {
        "resourceName": "keep",
        "excludeTopology": True,
        "selectors": {"drivers": ["iavf"], "pfNames": ["ens1f0#0-3"]},
    }
    node.write("config.json", json.dumps({"resourceList": [changed]}))
    d.hup()
    kubelet.wait_for_devices(
        "intel.com/keep",
        lambda devs: (
            devs
            == {**healthy(*ENS1F0_VFS[:4], numa=None), **unhealthy(*ENS1F0_VFS[4:6], numa=None)}
        ),
    )
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate("intel.com/keep", [ENS1F0_VFS[4]])
    assert "no longer fits" in err.value.details()
    assert inode(sock) == before and not watch.ended
    assert [a.resource for a in kubelet.attempts] == ["intel.com/keep"]


def test_configmap_symlink_swap_is_picked_up_without_sighup(node: Node) -> None:
    kubelet = node.kubelet()
    config = node.configmap(rl(KEEP), version=1)
    assert os.readlink(config) == "..data/config.json"
    d = node.daemon(config)
    wait_registered(kubelet, {"intel.com/keep"})
    d.wait_serving()
    keep_inode = inode(node.kubelet_dir / default_socket_name("intel.com/keep"))
    node.configmap(rl(KEEP, NEW), version=2)  # no signal: the daemon notices the swap itself
    wait_registered(kubelet, {"intel.com/keep", "intel.com/new"})
    assert inode(node.kubelet_dir / default_socket_name("intel.com/keep")) == keep_inode
    assert "config reloaded" in d.log()


# -- bad configs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (rl(("a", {"vendor": ["8086"]})), "resourceList[0].selectors[0].vendor"),
        (rl(("a", {"pfNames": ["ens1f0#3-1"]})), "resourceList[0].selectors[0].pfNames"),
        (rl(("a", {}), ("a", {})), "resourceList[1]: duplicate resource intel.com/a"),
        ("nsm:\n  pfs:\n    - {pf: ens1f0, serviceDomains: [a.org]}\n", "nsm.pfs[0].capabilities"),
        ("resourceList: [\n", "not valid JSON or YAML"),
    ],
    ids=["unknown-selector", "bad-range", "duplicate", "nsm-missing-field", "not-yaml"],
)
def test_bad_config_at_start_exits_2_with_one_line(node: Node, text: str, field: str) -> None:
    kubelet = node.kubelet()
    config = node.write("config.yaml", text)
    d = node.daemon(config)
    assert d.proc.wait(30) == 2
    err = d.log()
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"sriov-device-plugin: error: {config}: ")
    assert field in err
    assert "Traceback" not in err
    assert node.plugin_sockets() == set() and kubelet.attempts == []


def test_missing_config_file_at_start_exits_2(node: Node) -> None:
    d = node.daemon(node.root / "nope.json")
    assert d.proc.wait(30) == 2
    assert (
        d.log()
        == f"sriov-device-plugin: error: {node.root / 'nope.json'}: No such file or directory\n"
    )


def test_bad_config_on_reload_keeps_serving_the_old_pools(node: Node) -> None:
    kubelet = node.kubelet()
    config = node.write("config.json", rl(KEEP, GONE))
    d = node.daemon(config, "--log-format", "json")
    wait_registered(kubelet, {"intel.com/keep", "intel.com/gone"})
    d.wait_log('"msg": "serving 2 pools')
    sockets = node.plugin_sockets()

    node.write("config.json", rl(KEEP, ("bad", {"pfNames": ["ens1f1#3-1"]})))
    d.hup()
    d.wait_log("config reload failed")
    records = [json.loads(line) for line in d.log().splitlines()]  # every line one JSON record
    failed = [r for r in records if "config reload failed" in r["msg"]]
    assert failed and {r["level"] for r in failed} == {"error"}
    assert "keeping the last good config" in failed[0]["msg"]
    assert f"{config}: resourceList[1].selectors[0].pfNames: bad VF range" in failed[0]["msg"]
    assert not [r for r in records if "error" in r]  # no traceback anywhere
    # the old pools are served as before
    assert d.proc.poll() is None
    assert node.plugin_sockets() == sockets
    assert kubelet.resources() == ["intel.com/gone", "intel.com/keep"]
    assert (
        kubelet.allocate("intel.com/gone", [ENS1F1_VFS[0]]).envs["PCIDEVICE_INTEL_COM_GONE"]
        == ENS1F1_VFS[0]
    )
    # and a good config afterwards is taken
    node.write("config.json", rl(KEEP, NEW))
    d.hup()
    wait_registered(kubelet, {"intel.com/keep", "intel.com/new"})
    assert d.proc.poll() is None


def test_reload_with_a_pool_that_cannot_be_served_keeps_the_others(node: Node) -> None:
    """A valid name whose socket path is too long for a unix socket (108 bytes): the daemon
    logs why and serves every other pool, the new ones too, instead of exiting."""
    kubelet = node.kubelet()
    config = node.write("config.json", rl(KEEP))
    d = node.daemon(config)
    wait_registered(kubelet, {"intel.com/keep"})
    d.wait_serving()
    long = "x" * 63
    node.write("config.json", rl(KEEP, (long, {"pfNames": ["ens1f1"]}), NEW))
    d.hup()
    wait_registered(kubelet, {"intel.com/keep", "intel.com/new"})
    line = next(ln for ln in d.wait_log(long).splitlines() if long in ln)
    assert "ERROR" in line and "longer than 107 bytes" in line
    assert d.proc.poll() is None
    assert kubelet.resources() == ["intel.com/keep", "intel.com/new"]
    assert len(kubelet.attempts) == 2  # the long one was never offered to kubelet


def test_kubelet_folder_wiped_and_recreated(node: Node) -> None:
    """Kubelet's folder removed while kubelet is down (a reinstall): the daemon waits for it
    to come back instead of exiting, then serves and registers again."""
    kubelet = node.kubelet()
    d = node.daemon(node.write("config.json", rl(KEEP, NEW)))
    wait_registered(kubelet, {"intel.com/keep", "intel.com/new"})
    d.wait_serving()
    kubelet.stop()
    shutil.rmtree(node.kubelet_dir)
    d.wait_log("folder does not exist")
    assert d.proc.poll() is None
    kubelet.start()  # makes the folder again
    wait_registered(kubelet, {"intel.com/keep", "intel.com/new"})
    assert d.proc.poll() is None
