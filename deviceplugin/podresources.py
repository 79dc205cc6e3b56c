"""Which devices pods hold now, from the kubelet pod-resources API (v1 List).

Only used to release VFs shared by NSM-form pools (state.py): without this socket a VF allocated
through one resource stays Unhealthy in the others until the plugin restarts.
"""

from __future__ import annotations

import logging
import os

import grpc

from deviceplugin.types import DevicePluginError
from sriov_nsm_wire.podresources.v1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


class PodResourcesError(DevicePluginError):
    pass


def held_devices(socket_path: str, resources: set[str], timeout: float = 5.0) -> dict[str, str]:
    """Device ID -> resource name, for every device of `resources` some pod holds."""
    if not os.path.exists(socket_path):
        raise PodResourcesError(f"pod-resources socket {socket_path} does not exist")
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)
        try:
            resp = stub.List(api_pb2.ListPodResourcesRequest(), timeout=timeout)
        except grpc.RpcError as e:
            raise PodResourcesError(f"pod-resources List failed: {e.details()}") from e
    out: dict[str, str] = {}
    for pod in resp.pod_resources:
        for container in pod.containers:
            for devs in container.devices:
                if devs.resource_name in resources:
                    for dev in devs.device_ids:
                        out[dev] = devs.resource_name
    return out
