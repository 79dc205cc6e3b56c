"""The kubelet stand-in moved to `lab.kubelet` (the lab's node runs it too); re-exported here."""

from lab.kubelet import (
    CHECKPOINT_FILE,
    HEALTHY,
    KUBELET_SOCKET,
    SUPPORTED_VERSIONS,
    AdmissionError,
    KubeletStandIn,
    PluginWatcherStandIn,
    PodAllocation,
    PodResourcesStandIn,
    RegisterAttempt,
    SeenDevice,
    StandInError,
    WatcherResult,
    is_extended_resource_name,
)

__all__ = [
    "CHECKPOINT_FILE",
    "HEALTHY",
    "KUBELET_SOCKET",
    "SUPPORTED_VERSIONS",
    "AdmissionError",
    "KubeletStandIn",
    "PluginWatcherStandIn",
    "PodAllocation",
    "PodResourcesStandIn",
    "RegisterAttempt",
    "SeenDevice",
    "StandInError",
    "WatcherResult",
    "is_extended_resource_name",
]
