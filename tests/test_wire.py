"""The wire contracts: committed generated code matches proto/, and names match kubelet's."""

from __future__ import annotations

import filecmp
from pathlib import Path

from sriov_nsm_wire.deviceplugin.v1beta1 import api_pb2 as dp
from sriov_nsm_wire.pluginregistration.v1 import api_pb2 as reg
from sriov_nsm_wire.podresources.v1 import api_pb2 as pr
from sriov_nsm_wire.regen import main as regen

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    assert regen(["--out", str(tmp_path)]) == 0
    for new in (tmp_path / "sriov_nsm_wire").rglob("*_pb2*.py*"):
        committed = REPO / new.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is not committed: run `make proto`"
        assert filecmp.cmp(new, committed, shallow=False), f"{committed} is stale: run `make proto`"


def test_services_and_fields_are_kubelets() -> None:
    """Full method names and field numbers are what kubelet speaks; a rename would break it."""
    assert dp.DESCRIPTOR.services_by_name["DevicePlugin"].full_name == "v1beta1.DevicePlugin"
    assert dp.DESCRIPTOR.services_by_name["Registration"].full_name == "v1beta1.Registration"
    assert (
        reg.DESCRIPTOR.services_by_name["Registration"].full_name
        == "pluginregistration.Registration"
    )
    assert pr.DESCRIPTOR.services_by_name["PodResourcesLister"].full_name == "v1.PodResourcesLister"
    fields = {f.name: f.number for f in dp.ContainerAllocateResponse.DESCRIPTOR.fields}
    assert fields == {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}
    fields = {f.name: f.number for f in dp.ContainerPreferredAllocationRequest.DESCRIPTOR.fields}
    assert fields == {"available_deviceIDs": 1, "must_include_deviceIDs": 2, "allocation_size": 3}
    fields = {f.name: f.number for f in dp.RegisterRequest.DESCRIPTOR.fields}
    assert fields == {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4}
    fields = {f.name: f.number for f in reg.PluginInfo.DESCRIPTOR.fields}
    assert fields == {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4}
    fields = {f.name: f.number for f in pr.ContainerDevices.DESCRIPTOR.fields}
    assert fields == {"resource_name": 1, "device_ids": 2, "topology": 3}


def test_nsm_and_cri_names_are_upstreams() -> None:
    """NSM clients and container runtimes dial these full names; field numbers must not move."""
    from sriov_nsm_wire.cri.runtime.v1 import api_pb2 as cri
    from sriov_nsm_wire.networkservice import networkservice_pb2 as ns
    from sriov_nsm_wire.registry import registry_pb2 as rg

    assert ns.DESCRIPTOR.services_by_name["NetworkService"].full_name == (
        "networkservice.NetworkService"
    )
    assert ns.DESCRIPTOR.services_by_name["MonitorConnection"].full_name == (
        "networkservice.MonitorConnection"
    )
    assert rg.DESCRIPTOR.services_by_name["NetworkServiceEndpointRegistry"].full_name == (
        "registry.NetworkServiceEndpointRegistry"
    )
    assert (
        cri.DESCRIPTOR.services_by_name["RuntimeService"].full_name == "runtime.v1.RuntimeService"
    )
    fields = {f.name: f.number for f in ns.Connection.DESCRIPTOR.fields}
    assert fields == {
        "id": 1,
        "network_service": 2,
        "mechanism": 3,
        "context": 4,
        "labels": 5,
        "path": 6,
        "network_service_endpoint_name": 7,
        "payload": 8,
        "state": 9,
    }
    fields = {f.name: f.number for f in ns.ConnectionContext.DESCRIPTOR.fields}
    assert fields == {
        "ip_context": 1,
        "dns_context": 2,
        "ethernet_context": 3,
        "extra_context": 4,
        "MTU": 5,
    }
    fields = {f.name: f.number for f in rg.NetworkServiceEndpoint.DESCRIPTOR.fields}
    assert fields["url"] == 4 and fields["expiration_time"] == 5
    fields = {f.name: f.number for f in cri.PodSandboxStatus.DESCRIPTOR.fields}
    assert fields["linux"] == 6 and fields["network"] == 5
    assert {f.name: f.number for f in cri.PodSandboxStatusResponse.DESCRIPTOR.fields} == {
        "status": 1,
        "info": 2,
        "timestamp": 4,
    }
