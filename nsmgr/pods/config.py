"""The `pods:` section of nsmgr's config: where kubelet, the runtime and the API server are."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nsmgr.pods.netns import DEFAULT_CRI_ENDPOINT
from nsmgr.pods.podresources import DEFAULT_SOCKET


class PodsConfig(BaseModel):
    """Validated settings of the pod integration; every host path can be moved (tests, lab)."""

    model_config = ConfigDict(extra="forbid")

    node_name: str = Field(
        default_factory=lambda: os.environ.get("NODE_NAME", ""),
        validate_default=True,  # an empty $NODE_NAME must be caught too
        description="this node's name (spec.nodeName of its pods); default: $NODE_NAME",
    )
    podresources_socket: str = Field(
        DEFAULT_SOCKET, description="kubelet's pod-resources v1 socket"
    )
    cri_socket: str = Field(
        DEFAULT_CRI_ENDPOINT,
        description="CRI runtime endpoint (unix:///path or a path); empty: /proc only",
    )
    proc_root: str = Field("/proc", description="the host's /proc (for the netns fallback)")
    resync_seconds: float = Field(60.0, gt=0, description="full reconcile period")
    retry_initial_seconds: float = Field(0.5, gt=0, description="first retry of a pod not ready")
    retry_max_seconds: float = Field(30.0, gt=0, description="longest pause between retries")
    resource_prefixes: list[str] = Field(
        default_factory=list,
        description="resources whose devices count as VFs ('example.com/' or 'example.com'); "
        "empty: every resource whose device IDs are PCI addresses",
    )
    kubeconfig: str | None = Field(
        None, description="kubeconfig file; unset: the in-cluster service account"
    )
    watch_timeout_seconds: int = Field(300, gt=0, description="server-side length of one watch")
    rpc_timeout_seconds: float = Field(5.0, gt=0, description="kubelet and runtime call timeout")

    @field_validator("node_name")
    @classmethod
    def _node_given(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("no node name: set pods.node_name or the NODE_NAME environment")
        return v

    @field_validator("resource_prefixes")
    @classmethod
    def _prefixes(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip() or p.startswith("/"):
                raise ValueError(f"resource prefix {p!r} is not a domain like example.com/")
        return v
