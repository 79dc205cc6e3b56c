"""One call that starts the pod integration from its config, and one handle that stops it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nsmgr.model import ConnectionAgent
from nsmgr.pods.config import PodsConfig
from nsmgr.pods.controller import PodController
from nsmgr.pods.kubesource import KubernetesPodSource
from nsmgr.pods.netns import NetnsResolver
from nsmgr.pods.podresources import PodResourcesClient
from nsmgr.pods.podsource import PodSource

log = logging.getLogger(__name__)


@dataclass
class PodIntegration:
    """What `start_pod_integration` started; `stop()` ends its threads and closes its channels."""

    controller: PodController
    source: PodSource
    resources: PodResourcesClient
    resolver: NetnsResolver

    def stop(self) -> None:
        self.controller.stop()  # stops the source too
        self.resources.close()
        self.resolver.close()


def start_pod_integration(
    agent: ConnectionAgent, cfg: PodsConfig, *, source: PodSource | None = None
) -> PodIntegration:
    """Watch this node's pods and keep `agent` in step with them.

    `source` replaces the API server (the lab's FakePodSource); without it the kubernetes
    client is configured from `cfg.kubeconfig` or the in-cluster service account, and a
    PodSourceError says why that failed.
    """
    if source is None:
        source = KubernetesPodSource.from_config(
            cfg.node_name, cfg.kubeconfig, watch_timeout=cfg.watch_timeout_seconds
        )
    resources = PodResourcesClient(
        cfg.podresources_socket, cfg.resource_prefixes, timeout=cfg.rpc_timeout_seconds
    )
    resolver = NetnsResolver(cfg.cri_socket, cfg.proc_root, timeout=cfg.rpc_timeout_seconds)
    controller = PodController(
        agent,
        source,
        resources,
        resolver,
        cfg.node_name,
        resync_seconds=cfg.resync_seconds,
        retry_initial=cfg.retry_initial_seconds,
        retry_max=cfg.retry_max_seconds,
    )
    controller.start()
    log.info(
        "pod integration for node %s: pod-resources %s, runtime %s",
        cfg.node_name,
        cfg.podresources_socket,
        cfg.cri_socket or f"none ({cfg.proc_root} only)",
    )
    return PodIntegration(controller, source, resources, resolver)
