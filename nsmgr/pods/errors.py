"""One exception tree for the pod integration; library errors are translated where they arise."""

from __future__ import annotations

from nsmgr.errors import NsmgrError


class PodsError(NsmgrError):
    """Base of the pod integration's errors; the message is one line."""


class PodSourceError(PodsError):
    """The pod list or watch failed (API server unreachable, refused, expired)."""


class PodResourcesError(PodsError):
    """Kubelet's pod-resources API could not be asked (socket missing, call failed)."""


class NetnsError(PodsError):
    """A pod's network namespace cannot be found, yet or at all."""
