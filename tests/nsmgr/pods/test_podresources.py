"""The pod-resources client against the kubelet stand-in over a real unix socket."""

from __future__ import annotations

import os

import pytest

from nsmgr.pods.errors import PodResourcesError
from nsmgr.pods.podresources import PodDevice, PodResourcesClient
from tests.nsmgr.pods.standins import PodResourcesStandIn

A, B, C = "0000:3b:02.0", "0000:3b:02.1", "0000:af:02.0"


def test_get_returns_the_pods_vfs_sorted(
    kubelet: PodResourcesStandIn, resources: PodResourcesClient
) -> None:
    # kubelet reports devices from sets, in any order: the client sorts
    kubelet.admit("ns1", "p", {"example.com/100g": [C, A]})
    kubelet.admit("ns1", "p", {"lab.example.org/25g": [B]}, container="sidecar")
    assert resources.devices("ns1", "p") == [
        PodDevice(A, "example.com/100g", "c0"),
        PodDevice(B, "lab.example.org/25g", "sidecar"),
        PodDevice(C, "example.com/100g", "c0"),
    ]
    assert kubelet.calls == ["Get"]


def test_unknown_pod_and_pod_without_devices_hold_nothing(
    kubelet: PodResourcesStandIn, resources: PodResourcesClient
) -> None:
    assert resources.devices("ns1", "nobody") == []  # kubelet: UNKNOWN "... not found"
    kubelet.admit("ns1", "plain")
    assert resources.devices("ns1", "plain") == []


def test_only_vf_resources_and_pci_ids_count(kubelet: PodResourcesStandIn, sockdir: str) -> None:
    kubelet.admit(
        "ns1",
        "p",
        {
            "example.com/100g": [A],
            "other.io/gpu": ["GPU-8c1f"],  # not a PCI address: never a VF
            "other.io/qat": [B],
            "example.com.evil/x": [C],
        },
        numa={A: [0, 1]},  # a device on two NUMA nodes is listed twice by kubelet
    )
    client = PodResourcesClient(kubelet.socket_path, ["example.com"], timeout=2.0)
    try:
        assert client.devices("ns1", "p") == [PodDevice(A, "example.com/100g", "c0")]
    finally:
        client.close()
    everything = PodResourcesClient(kubelet.socket_path, timeout=2.0)
    try:
        assert [d.pci_address for d in everything.devices("ns1", "p")] == [A, B, C]
    finally:
        everything.close()


def test_disabled_get_falls_back_to_list_once(sockdir: str) -> None:
    with PodResourcesStandIn(os.path.join(sockdir, "k.sock"), get_enabled=False) as kubelet:
        kubelet.admit("ns1", "p", {"example.com/100g": [A]})
        client = PodResourcesClient(kubelet.socket_path, timeout=2.0)
        try:
            assert client.devices("ns1", "p") == [PodDevice(A, "example.com/100g", "c0")]
            assert client.devices("ns1", "other") == []
        finally:
            client.close()
        assert kubelet.calls == ["Get", "List", "List"]  # Get is not tried again


def test_list_all(kubelet: PodResourcesStandIn, resources: PodResourcesClient) -> None:
    kubelet.admit("ns1", "p", {"example.com/100g": [B, A]})
    kubelet.admit("ns2", "q")
    assert resources.list_all() == {
        ("ns1", "p"): [
            PodDevice(A, "example.com/100g", "c0"),
            PodDevice(B, "example.com/100g", "c0"),
        ],
        ("ns2", "q"): [],
    }


def test_kubelet_away_is_an_error_with_one_line(sockdir: str) -> None:
    client = PodResourcesClient(os.path.join(sockdir, "absent.sock"), timeout=0.5)
    try:
        with pytest.raises(PodResourcesError, match=r"^pod-resources Get failed: UNAVAILABLE"):
            client.devices("ns1", "p")
        with pytest.raises(PodResourcesError, match=r"^pod-resources List failed: UNAVAILABLE"):
            client.list_all()
    finally:
        client.close()
