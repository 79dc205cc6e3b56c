"""One exception tree for nsmgr. Requests that cannot be honoured as asked are `RequestError`s
(model.py, shared with the pod integration), split by what the caller should do about them; the
rest are `NsmgrError`s: the node could not do its part. Only main() and the gRPC boundary turn
either into an exit code or a status."""

from __future__ import annotations

from nsmgr.model import RequestError


class NsmgrError(Exception):
    """Base of every error nsmgr raises on purpose that is not the requester's fault."""


class ConfigError(NsmgrError):
    """The config file is missing or invalid; the message is `file: field: reason`."""


class JournalError(NsmgrError):
    """The state dir cannot be read or written, or a record in it is not one of ours."""


class NetlinkError(NsmgrError):
    """The kernel refused a netlink request; `errno` is its answer, the message says what was asked."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class PfSideError(NsmgrError):
    """The PF refused a VF setting (IFLA_VF_*), or cannot report its VFs while settings were asked."""


class EndpointError(NsmgrError):
    """The service's endpoint failed to give (or take back) the connection's context."""


class StoppingError(NsmgrError):
    """The agent is shutting down: try again once it is back (the gRPC status is UNAVAILABLE)."""


class RestoreError(NsmgrError):
    """A VF could not be put back exactly as recorded; its journal record stays for the next try."""


class NotFoundError(RequestError):
    """What the request names does not exist: device, network namespace, service, connection."""


class ConflictError(RequestError):
    """The request is valid but the node's state forbids it now: the device is held by another
    connection, the interface name is taken in the pod, the VF is mid-detach."""


class ForbiddenError(RequestError):
    """The service's policy does not admit the requester (its Kubernetes namespace)."""
