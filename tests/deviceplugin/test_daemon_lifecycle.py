"""`sriov-device-plugin` end to end, part two: kubelet and plugin restarts, plugin-watcher
registration, Allocate and GetPreferredAllocation, shared NSM pools across pod lifetimes, /metrics
and /readyz, and the `pools` subcommand. Helpers and conventions as in test_daemon.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from deviceplugin import manager as manager_mod
from deviceplugin.manager import DevicePluginManager, Options
from deviceplugin.registration import socket_stem
from deviceplugin.server import default_socket_name
from lab.kubelet import (
    AdmissionError,
    KubeletStandIn,
    PluginWatcherStandIn,
    PodResourcesStandIn,
)
from tests.deviceplugin.daemon import (
    CX6_VFS,
    ENS1F0_VFS,
    ENS1F1_VFS,
    NSM_CONFIG,
    NSM_POOLS,
    X710_VFS,
    Node,
    free_port,
    healthy,
    http_get,
    metric_value,
    rl,
    unhealthy,
    wait_registered,
    wait_until,
)

SHARED, OTHER = "example.com/100g", "other.org/100g"


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    try:
        yield n
    finally:
        n.close()


def accepted(kubelet: KubeletStandIn, resource: str) -> int:
    return [a.resource for a in kubelet.attempts if a.accepted].count(resource)


# -- restarts -----------------------------------------------------------------------------------


def test_kubelet_restart_reserves_and_reregisters(node: Node) -> None:
    kubelet = node.kubelet()
    d = node.daemon(node.write("config.yaml", NSM_CONFIG))
    before = wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    kubelet.restart()  # wipes our sockets, listens on a new kubelet.sock
    after = wait_registered(kubelet, NSM_POOLS)
    assert after == before
    for r in NSM_POOLS:
        assert accepted(kubelet, r) == 2
        assert (node.kubelet_dir / default_socket_name(r)).exists()
    assert "kubelet restart" in d.log()
    # and it works as before
    assert kubelet.allocate(SHARED, [ENS1F0_VFS[0]]).envs["PCIDEVICE_EXAMPLE_COM_100G"]


def test_own_socket_removed_is_served_again(node: Node) -> None:
    """Only that pool is served and registered again: the others are registered with the same
    kubelet, which would take a second registration of a live plugin as a duplicate."""
    kubelet = node.kubelet()
    port = free_port()
    d = node.daemon(node.write("config.yaml", NSM_CONFIG), metrics_port=port)
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    sock = node.kubelet_dir / default_socket_name("example.com/10g")
    os.unlink(sock)
    wait_until(lambda: accepted(kubelet, "example.com/10g") == 2, "re-registration of 10g")
    wait_registered(kubelet, NSM_POOLS)
    assert sock.exists()
    assert [(a.resource, a.accepted) for a in kubelet.attempts[len(NSM_POOLS) :]] == [
        ("example.com/10g", True)
    ]
    assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200


def test_plugin_restart_registers_again_and_cleans_up(node: Node) -> None:
    kubelet = node.kubelet()
    node.pod_resources(kubelet)
    config = node.write("config.yaml", NSM_CONFIG)
    d = node.daemon(config)
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    vf = ENS1F0_VFS[0]
    kubelet.allocate(SHARED, [vf], pod="pod-a")
    kubelet.wait_for_devices(OTHER, lambda devs: not devs[vf].healthy)
    assert os.listdir(node.devinfo_dir)
    assert d.term() == 0
    for r in NSM_POOLS:
        assert kubelet.wait_disconnected(r) == grpc.StatusCode.OK  # streams ended cleanly
    assert node.plugin_sockets() == set()
    assert os.listdir(node.devinfo_dir) == []
    assert [f for f in os.listdir(node.kubelet_dir) if f.startswith(".")] == []

    d2 = node.daemon(config)
    lists = wait_registered(kubelet, NSM_POOLS)
    d2.wait_serving()
    for r in NSM_POOLS:
        assert accepted(kubelet, r) == 2
    # the pod still holds the VF: learnt from pod-resources at start, before the first list
    assert lists[OTHER] == {**unhealthy(vf), **healthy(*ENS1F0_VFS[1:7])}
    assert kubelet.updates(OTHER) == 1
    assert lists[SHARED][vf].healthy


def test_plugin_watcher_registration(node: Node) -> None:
    node.registry_dir.mkdir()
    kubelet = node.kubelet(start=False)  # no kubelet.sock: the plugin watcher is the only way
    d = node.daemon(node.write("config.yaml", NSM_CONFIG))
    d.wait_serving()
    reg = {socket_stem(r) + "-reg.sock" for r in NSM_POOLS}
    wait_until(lambda: reg <= set(os.listdir(node.registry_dir)), "registration sockets")
    watcher = PluginWatcherStandIn(str(node.registry_dir), kubelet)
    results = watcher.scan()
    assert {(r.name, r.registered, r.error) for r in results} == {(r, True, "") for r in NSM_POOLS}
    lists = wait_registered(kubelet, NSM_POOLS)
    assert lists["example.com/10g"] == unhealthy(*X710_VFS, numa=1)
    d.wait_log("through the plugin watcher")
    assert d.term() == 0
    assert not (reg & set(os.listdir(node.registry_dir)))
    watcher.scan()  # the sockets went: kubelet deregisters the plugins
    assert kubelet.resources() == []


# -- Allocate and GetPreferredAllocation ----------------------------------------------------------


def test_allocate_envs_device_info_and_errors(node: Node) -> None:
    kubelet = node.kubelet()
    d = node.daemon(node.write("config.yaml", NSM_CONFIG))
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()

    vf = ENS1F1_VFS[1]
    resp = kubelet.allocate(SHARED, [vf])
    assert resp.envs["PCIDEVICE_EXAMPLE_COM_100G"] == vf
    assert json.loads(resp.envs["PCIDEVICE_EXAMPLE_COM_100G_INFO"]) == {
        vf: {"generic": {"deviceID": vf}}
    }
    assert list(resp.devices) == []  # a netdev VF needs no device node
    info = node.devinfo_dir / f"example.com-100g-{vf}-device.json"
    assert json.loads(info.read_text()) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": vf},
    }

    vfio = ENS1F0_VFS[6]
    resp = kubelet.allocate(SHARED, [vfio])
    group = node.iommu_group(vfio)
    assert {(s.host_path, s.permissions) for s in resp.devices} == {
        ("/dev/vfio/vfio", "rw"),
        (f"/dev/vfio/{group}", "rw"),
    }

    for resource, dev_id, words in [
        (SHARED, "0000:99:00.0", ["not a device"]),  # unknown
        (SHARED, X710_VFS[0], ["not a device"]),  # a device of another pool
        ("example.com/10g", X710_VFS[0], ["no carrier"]),  # unhealthy
    ]:
        with pytest.raises(grpc.RpcError) as err:
            kubelet.allocate(resource, [dev_id])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dev_id in err.value.details()
        for w in words:
            assert w in err.value.details()
    # a vfio VF whose group node is missing on the host: refused, naming the node
    vfio = CX6_VFS[4]
    group = node.iommu_group(vfio)
    os.unlink(node.dev_root / "vfio" / group)
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate("example.com/100g-rdma", [vfio])
    assert f"/dev/vfio/{group}" in err.value.details() and vfio in err.value.details()


def test_allocate_with_cdi(node: Node) -> None:
    kubelet = node.kubelet()
    cdi = node.root / "cdi"
    d = node.daemon(node.write("config.yaml", NSM_CONFIG), "--cdi-dir", str(cdi))
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    vfio = ENS1F0_VFS[6]
    resp = kubelet.allocate(SHARED, [vfio])
    names = [c.name for c in resp.cdi_devices]
    assert names == [f"example.com/net-pci-100g={vfio}"]
    assert list(resp.devices) == []  # CDI injects the nodes instead
    spec = json.loads((cdi / "sriov-dp-example.com-net-pci-100g.json").read_text())
    group = node.iommu_group(vfio)
    assert spec["kind"] == "example.com/net-pci-100g"
    assert [dev["name"] for dev in spec["devices"]] == [vfio]
    assert {n["hostPath"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]} == {
        "/dev/vfio/vfio",
        f"/dev/vfio/{group}",
    }
    assert d.term() == 0
    assert os.listdir(cdi) == []  # SIGTERM removes the specs it wrote


def test_preferred_allocation_through_the_stand_in(node: Node) -> None:
    kubelet = node.kubelet()
    d = node.daemon(node.write("config.yaml", NSM_CONFIG))
    wait_registered(kubelet, NSM_POOLS)
    d.wait_serving()
    assert kubelet.options(SHARED).get_preferred_allocation_available
    every = sorted(kubelet.devices(SHARED))
    # nothing held: pack onto the PF with the most free VFs (ens1f0, 7 against 4)
    assert kubelet.preferred(SHARED, every, [], 2) == ENS1F0_VFS[:2]
    # must-include first, then the rest on the same NUMA node
    got = kubelet.preferred(SHARED, every, [ENS1F1_VFS[2]], 3)
    assert got[0] == ENS1F1_VFS[2] and len(set(got)) == 3
    # a pod holds two VFs of ens1f1: pack there first
    kubelet.allocate(SHARED, ENS1F1_VFS[:2], pod="p1")
    free = [i for i in every if i not in ENS1F1_VFS[:2]]
    assert kubelet.preferred(SHARED, free, [], 2) == ENS1F1_VFS[2:4]
    # kubelet's admission asks for it and allocates what it got
    resp = kubelet.admit("p2", SHARED, 2)
    assert resp.envs["PCIDEVICE_EXAMPLE_COM_100G"] == ",".join(ENS1F1_VFS[2:4])
    with pytest.raises(grpc.RpcError) as err:
        kubelet.preferred(SHARED, ["0000:99:00.0"], [], 1)
    assert "0000:99:00.0" in err.value.details()


# -- in process: pods coming and going (the 30 s allocation grace cut short), start-up races ----


@dataclass
class InProcess:
    node: Node
    kubelet: KubeletStandIn
    podres: PodResourcesStandIn
    queries: list[int]  # one entry per pod-resources query the manager made


@pytest.fixture
def in_process(node: Node, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], InProcess]]:
    """Starts the daemon's manager in this process on a config, its loop in a thread, with resync
    0.2 s and an allocation grace of 0.3 s instead of 30 s (not a flag: the only way to see a
    release without waiting half a minute); kubelet and its pod-resources API up first."""
    queries: list[int] = []
    real = manager_mod.held_devices

    def counting(socket_path: str, resources: set[str], timeout: float = 5.0) -> dict[str, str]:
        out = real(socket_path, resources, timeout)
        queries.append(1)
        return out

    monkeypatch.setattr(manager_mod, "held_devices", counting)
    started: list[tuple[DevicePluginManager, threading.Thread]] = []

    def start(config_text: str) -> InProcess:
        kubelet = node.kubelet()
        podres = node.pod_resources(kubelet)
        opts = Options(
            config_file=str(node.write("config.yaml", config_text)),
            sysfs_root=str(node.sysfs_root),
            kubelet_dir=str(node.kubelet_dir),
            registry_dir=str(node.registry_dir),
            pod_resources_socket=str(node.podres_socket),
            device_info_dir=str(node.devinfo_dir),
            dev_root=str(node.dev_root),
            resync_period=0.2,
        )
        m = DevicePluginManager(opts)
        m.states.alloc_grace = 0.3
        thread = threading.Thread(target=m.run, name="dp-manager", daemon=True)
        started.append((m, thread))
        m.start()
        thread.start()
        return InProcess(node, kubelet, podres, queries)

    try:
        yield start
    finally:
        for m, thread in started:
            m.request_stop()
            if thread.is_alive():
                thread.join(10)
            m.stop()
            assert not thread.is_alive()


def test_shared_pools_hand_a_vf_out_once_until_the_pod_goes(
    in_process: Callable[[str], InProcess], caplog: pytest.LogCaptureFixture
) -> None:
    dp = in_process(NSM_CONFIG)
    kubelet, queries = dp.kubelet, dp.queries
    wait_registered(kubelet, NSM_POOLS)
    vf = ENS1F0_VFS[0]
    kubelet.allocate(SHARED, [vf], pod="pod-a")
    kubelet.wait_for_devices(
        OTHER, lambda devs: devs == {**unhealthy(vf), **healthy(*ENS1F0_VFS[1:7])}
    )
    assert kubelet.devices(SHARED)[vf].healthy  # healthy where it was allocated
    with pytest.raises(grpc.RpcError) as err:
        kubelet.allocate(OTHER, [vf])
    assert vf in err.value.details() and f"in use through {SHARED}" in err.value.details()
    with pytest.raises(AdmissionError, match="Available: 6"):
        kubelet.admit("pod-b", OTHER, 7)

    # the pod still holds it: resyncs past the allocation grace keep it Unhealthy
    n = len(queries)
    wait_until(lambda: len(queries) >= n + 4, "four pod-resources queries")
    assert not kubelet.devices(OTHER)[vf].healthy

    assert dp.podres.release("pod-a") == 1  # the pod goes
    kubelet.wait_for_devices(OTHER, lambda devs: devs == healthy(*ENS1F0_VFS[:7]))
    assert kubelet.allocate(OTHER, [vf], pod="pod-c").envs["PCIDEVICE_OTHER_ORG_100G"] == vf
    kubelet.wait_for_devices(SHARED, lambda devs: not devs[vf].healthy)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_exclusive_pools_forget_allocations_of_pods_that_went(
    in_process: Callable[[str], InProcess],
) -> None:
    """resourceList pools only: what pods held still counts for preferred allocation, and keeps
    a rebound VF out of its new pool, only while a pod holds it."""
    config = rl(
        ("e810_netdev", {"drivers": ["iavf"], "pfNames": ["ens1f0", "ens1f1"]}),
        ("e810_vfio", {"drivers": ["vfio-pci"], "pfNames": ["ens1f0"]}),
    )
    dp = in_process(config)
    kubelet = dp.kubelet
    netdev, vfio = "intel.com/e810_netdev", "intel.com/e810_vfio"
    wait_registered(kubelet, {netdev, vfio})
    every = sorted(kubelet.devices(netdev))
    assert kubelet.preferred(netdev, every, [], 2) == ENS1F0_VFS[:2]  # most free VFs
    kubelet.allocate(netdev, ENS1F1_VFS[:2], pod="p1")
    assert kubelet.preferred(netdev, every, [], 2) == ENS1F1_VFS[:2]  # pack where held
    assert dp.podres.release("p1") == 1
    wait_until(
        lambda: kubelet.preferred(netdev, every, [], 2) == ENS1F0_VFS[:2],
        "preferred allocation to forget the pod that went",
    )

    vf = ENS1F0_VFS[0]
    kubelet.allocate(netdev, [vf], pod="p2")
    assert dp.podres.release("p2") == 1
    dp.node.sysfs.unbind(vf)
    dp.node.sysfs.bind(vf, "vfio-pci")
    kubelet.wait_for_devices(vfio, lambda devs: devs == healthy(vf, ENS1F0_VFS[6]))


def test_kubelet_restarting_while_the_daemon_starts(
    node: Node, monkeypatch: pytest.MonkeyPatch, in_process: Callable[[str], InProcess]
) -> None:
    """Kubelet restarts (wiping the socket just served) while the daemon is still registering
    its first pool, as when both start at boot: every pool still ends up registered."""
    real = manager_mod.register_with_kubelet
    restarted: list[str] = []

    def register(kubelet_socket: str, endpoint: str, resource: str, timeout: float = 5.0) -> None:
        if not restarted:
            restarted.append(resource)
            node.kubelets[0].dial_timeout = 1.0  # it dials a wiped socket once: fail fast
            node.kubelets[0].restart()
        real(kubelet_socket, endpoint, resource, timeout)

    monkeypatch.setattr(manager_mod, "register_with_kubelet", register)
    dp = in_process(NSM_CONFIG)
    assert restarted
    wait_registered(dp.kubelet, NSM_POOLS)


# -- metrics and readiness --------------------------------------------------------------------------


def test_metrics_and_readiness(node: Node) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    d = node.daemon(node.write("config.yaml", NSM_CONFIG), metrics_port=port)
    d.wait_serving()  # before kubelet exists: nothing registered
    assert http_get(f"{base}/readyz")[0] == 503
    assert http_get(f"{base}/healthz") == (200, "ok\n")
    text = http_get(f"{base}/metrics")[1]
    for r in NSM_POOLS:
        assert metric_value(text, "sriovnsm_dp_registered", resource=r) == 0

    kubelet = node.kubelet()  # wipes our sockets and listens: the daemon re-serves, registers
    wait_registered(kubelet, NSM_POOLS)
    wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, "readiness after registration")
    assert http_get(f"{base}/readyz") == (200, "ok\n")

    kubelet.allocate(SHARED, [ENS1F0_VFS[0]])
    with pytest.raises(grpc.RpcError):
        kubelet.allocate(SHARED, ["0000:99:00.0"])
    kubelet.wait_for_devices(OTHER, lambda devs: not devs[ENS1F0_VFS[0]].healthy)
    text = http_get(f"{base}/metrics")[1]

    def sample(name: str, **labels: str) -> float | None:
        return metric_value(text, name, **labels)

    for r in NSM_POOLS:
        assert sample("sriovnsm_dp_registered", resource=r) == 1
    assert sample("sriovnsm_dp_devices", resource=SHARED, health="Healthy") == 11
    assert sample("sriovnsm_dp_devices", resource=SHARED, health="Unhealthy") == 0
    assert sample("sriovnsm_dp_devices", resource=OTHER, health="Healthy") == 6
    assert sample("sriovnsm_dp_devices", resource=OTHER, health="Unhealthy") == 1
    assert sample("sriovnsm_dp_devices", resource="example.com/10g", health="Unhealthy") == 4
    assert sample("sriovnsm_dp_allocations_total", resource=SHARED, result="ok") == 1
    assert sample("sriovnsm_dp_allocations_total", resource=SHARED, result="error") == 1
    assert http_get(f"{base}/nope")[0] == 404

    kubelet.stop()  # kubelet goes away: its socket is gone, the daemon notices
    assert d.term() == 0


# -- `sriov-device-plugin pools` --------------------------------------------------------------------


def test_pools_subcommand_json_and_table(node: Node) -> None:
    config = node.write("config.yaml", NSM_CONFIG)
    res = node.run_cli(
        "pools", "--config-file", str(config), "--sysfs-root", str(node.sysfs_root), "-o", "json"
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    pools = {p["resource"]: p for p in doc["pools"]}
    assert set(pools) == NSM_POOLS
    assert [x["id"] for x in pools[SHARED]["devices"]] == [*ENS1F0_VFS[:7], *ENS1F1_VFS]
    assert pools[SHARED]["shared"] is True
    x710 = pools["example.com/10g"]["devices"]
    assert {(x["health"], x["reason"]) for x in x710} == {("Unhealthy", "PF ens5f0 has no carrier")}
    assert pools["example.com/100g-rdma"]["devices"][0]["numa_node"] is None  # excludeTopology
    unpooled = {u["id"]: u["reasons"] for u in doc["unpooled"]}
    assert set(unpooled) == {ENS1F0_VFS[7]}  # unbound
    reasons = unpooled[ENS1F0_VFS[7]]
    assert sorted(r["resource"] for r in reasons) == sorted(NSM_POOLS)  # one reason per pool
    assert {r["reason"] for r in reasons if r["resource"] in (SHARED, OTHER)} == {
        "unbound (no driver)"
    }

    # the global flags before `pools` work as well; the table names every pool and the why-nots
    res = node.run_cli("--config-file", str(config), "--sysfs-root", str(node.sysfs_root), "pools")
    assert res.returncode == 0, res.stderr
    for r in NSM_POOLS:
        assert r in res.stdout
    assert "in no pool (1 VFs)" in res.stdout
    assert ENS1F0_VFS[7] in res.stdout and "unbound (no driver)" in res.stdout
    assert "PF ens5f0 has no carrier" in res.stdout

    bad = node.write("bad.json", '{"resourceList": [{"resourceName": "a", "selectors": {"x": 1}}]}')
    res = node.run_cli("pools", "--config-file", str(bad), "--sysfs-root", str(node.sysfs_root))
    assert res.returncode == 2
    assert (
        res.stderr
        == f"sriov-device-plugin: error: {bad}: resourceList[0].selectors[0].x: unknown field 'x'\n"
    )
