"""Plain data shared by the device plugin's parts: pools, device states, allocations.

Nothing here knows gRPC or protobuf; server.py translates at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


class DevicePluginError(Exception):
    """Base of every error the device plugin raises on purpose."""


class ConfigError(DevicePluginError):
    """The config file is missing or invalid; the message names the file and the field."""


class AllocationError(DevicePluginError):
    """An Allocate or GetPreferredAllocation request that cannot be served (unknown or unhealthy
    device ID, a device in use through another resource, ...); the message names the device."""


@dataclass(frozen=True)
class PoolDevice:
    """A VF as a pool offers it: what ListAndWatch reports and what Allocate needs."""

    pci_address: str  # the kubelet device ID
    pf_pci_address: str
    pf_ifname: str | None
    vf_index: int
    vendor_id: str | None
    device_id: str | None
    driver: str | None
    ifname: str | None
    numa_node: int | None
    iommu_group: int | None
    rdma: bool


@dataclass(frozen=True)
class DeviceState:
    """One entry of a ListAndWatch list."""

    id: str
    healthy: bool
    numa_node: int | None  # None: no topology sent (unknown NUMA node, or excludeTopology)
    reason: str = ""  # why it is unhealthy, for logs and `pools` output


@dataclass(frozen=True)
class DeviceNode:
    """A host device node to expose in the container (kubelet DeviceSpec)."""

    host_path: str
    container_path: str
    permissions: str = "rw"


@dataclass(frozen=True)
class HostMount:
    host_path: str
    container_path: str
    read_only: bool = True


@dataclass
class ContainerAllocation:
    """What one container gets for its devices (kubelet ContainerAllocateResponse)."""

    envs: dict[str, str] = field(default_factory=dict)
    mounts: list[HostMount] = field(default_factory=list)
    devices: list[DeviceNode] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    cdi_devices: list[str] = field(default_factory=list)


class PoolHandler(Protocol):
    """What one device-plugin server serves: the pool logic behind one kubelet resource."""

    resource_name: str  # e.g. "example.com/100g"

    def device_states(self) -> list[DeviceState]:
        """The full current list for ListAndWatch."""
        ...

    def allocate(self, container_requests: list[list[str]]) -> list[ContainerAllocation]:
        """One ContainerAllocation per container; raises AllocationError naming a bad device."""
        ...

    def preferred_allocation(
        self, available: list[str], must_include: list[str], size: int
    ) -> list[str]:
        """The preferred device IDs for one container; raises AllocationError on bad input."""
        ...
