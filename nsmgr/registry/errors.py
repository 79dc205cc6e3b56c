"""One exception tree for the registry; the gRPC layer maps each kind to one status code."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error the registry raises on purpose."""


class InvalidName(RegistryError):
    """A service, endpoint or domain name that is not a DNS-style name (the message says why)."""


class BadRequest(RegistryError):
    """A registration or query that cannot be honoured as sent (no URL, a remote name to register)."""


class NotFound(RegistryError):
    """No such registration, or a domain with no registry in DNS."""


class ConfigError(RegistryError):
    """The registry's config file is missing or invalid; the message names the file and the field."""


class StoreError(RegistryError):
    """The backing store cannot be opened, migrated, read or written."""


class Conflict(StoreError):
    """A write lost a race (Kubernetes resourceVersion, an object created meanwhile): retry it."""


class ResolveError(RegistryError):
    """A domain's registry could not be resolved: DNS timed out or failed after the retries."""


class RemoteError(RegistryError):
    """Another domain's registry refused or failed a forwarded call; `code` is its gRPC status."""

    def __init__(self, message: str, code: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.code = code  # a grpc.StatusCode name: errors.py stays free of grpc
