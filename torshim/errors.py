"""One exception tree for the TOR shim; library errors are translated at the driver boundary."""


class ShimError(Exception):
    """Base of every error the TOR shim raises on purpose."""


class ValidationError(ShimError):
    """A value that would reach a switch (port name, VLAN, description) fails its strict pattern.

    Raised before any session opens: nothing from outside reaches a CLI line or an XML document
    unchecked."""


class ConfigError(ShimError):
    """The shim's config file is missing or invalid; the message names the file and the field."""


class ConnectError(ShimError):
    """The switch cannot be reached or refused the login (host key mismatch included)."""


class TransientError(ShimError):
    """Worth retrying: the datastore is locked by another session, a resource is in use."""


class LockDenied(TransientError):
    """NETCONF lock-denied, or the CLI's configuration session is held by someone else."""


class CommandRejected(ShimError):
    """The switch refused a change (an rpc-error, or a CLI error pattern); nothing was committed."""


class CommitError(ShimError):
    """The commit itself failed; the driver has discarded or rolled back what it staged."""


class VerifyError(ShimError):
    """After apply, what the switch reports differs from what was asked."""


class UnsupportedError(ShimError):
    """The driver (or the switch) cannot do what was asked, e.g. a mode it does not model."""


class StoreError(ShimError):
    """The embedded state store cannot be opened, migrated or written, or a write contradicts
    what it holds (the same connection id for another port or service)."""


class AddressExhausted(ShimError):
    """A service's subnet has no free address left to lease; the message names both."""


class CircuitOpen(ShimError):
    """The switch failed too many transactions in a row; requests fail fast until the cool-down."""


class DeadlineExceeded(ShimError):
    """The request's deadline passed before a transaction could carry it; nothing was applied."""


class WorkerStopped(ShimError):
    """The switch's worker was stopped before the request ran; nothing was applied."""


class PolicyError(ShimError):
    """The caller may not use this service (its Kubernetes namespace is not allowed); nothing done."""


class ConflictError(ShimError):
    """The request contradicts what the port already carries (a whole-port attachment of another
    service, or an id reused for something else); nothing done."""


class NotFoundError(ShimError):
    """A switch, service, port-map entry or connection the request names does not exist."""
