"""Kubernetes pod integration: annotated pods on this node get their VFs attached by the agent.

Pods come from a PodSource (the API server's watch, or a fake), VFs from kubelet's pod-resources
API, network namespaces from the container runtime (CRI) or /proc; the controller turns them
into AttachRequests and Closes through the ConnectionAgent protocol only.
"""

from nsmgr.pods.annotations import PodService, parse_annotations
from nsmgr.pods.config import PodsConfig
from nsmgr.pods.controller import PodController, ReconcileResult, SyncResult
from nsmgr.pods.errors import NetnsError, PodResourcesError, PodsError, PodSourceError
from nsmgr.pods.integration import PodIntegration, start_pod_integration
from nsmgr.pods.podsource import FakePodSource, Pod, PodEvent, PodSource

__all__ = [
    "FakePodSource",
    "NetnsError",
    "Pod",
    "PodController",
    "PodEvent",
    "PodIntegration",
    "PodResourcesError",
    "PodService",
    "PodSource",
    "PodSourceError",
    "PodsConfig",
    "PodsError",
    "ReconcileResult",
    "SyncResult",
    "parse_annotations",
    "start_pod_integration",
]
