"""The one small interface every switch driver implements (after NAPALM and
networking-generic-switch, minus their warts).

- `render(changes) -> Changeset` is pure: the vendor's CLI lines or XML, nothing sent;
- `read(ports) -> {port: PortConfig}` and `apply(changeset)` are the only methods doing I/O;
  `apply` locks, stages, commits (confirmed where the switch offers it), saves and unlocks, and on
  any failure leaves nothing half-applied (discard / rollback) before raising a ShimError;
- `converge(desired)` is the shared recipe: read, diff, render, apply, read back, verify.

One file per switch flavour, registered by its `name`; vendor command text lives in that file.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torshim.errors import UnsupportedError, VerifyError
from torshim.model import ApplyResult, Changeset, PortChange, PortConfig, diff


@dataclass(frozen=True)
class SwitchParams:
    """How to reach one switch (from config; secrets already read from their files)."""

    name: str
    driver: str
    host: str
    port: int = 22
    username: str = "admin"
    password: str | None = field(default=None, repr=False)
    key_file: str | None = None
    host_key_checking: bool = True
    known_hosts: str | None = None  # None: ~/.ssh/known_hosts
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    confirm_timeout: int = 60  # seconds a confirmed commit waits before the switch rolls back
    options: Mapping[str, Any] = field(default_factory=dict)  # vendor pass-through


class SwitchDriver(abc.ABC):
    name: ClassVar[str]
    transport: ClassVar[Literal["netconf", "cli"]]
    # What this flavour can do: "trunk", "access", "native-vlan", "confirmed-commit", "candidate".
    capabilities: ClassVar[frozenset[str]] = frozenset({"trunk", "access"})
    # True when apply() itself reads the changed ports back before it returns (and rolls back if
    # they differ), as the NETCONF flavours do between commit and confirm: converge then skips
    # its own read-back, one round trip per change.
    verified_apply: ClassVar[bool] = False

    def __init__(self, params: SwitchParams) -> None:
        self.params = params

    # -- pure -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def render(self, changes: Sequence[PortChange]) -> Changeset:
        """The vendor text for these changes. Values are re-validated here (defence in depth)."""

    def check(self, changes: Sequence[PortChange]) -> None:
        """UnsupportedError for anything this flavour cannot express."""
        for ch in changes:
            if ch.after.mode is not None and ch.after.mode not in self.capabilities:
                raise UnsupportedError(f"{self.name} does not support {ch.after.mode} ports")
            if ch.after.native_vlan is not None and "native-vlan" not in self.capabilities:
                raise UnsupportedError(f"{self.name} does not support a native VLAN")

    # -- I/O ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        """The ports' current switched-VLAN config, as the switch reports it."""

    @abc.abstractmethod
    def apply(self, changeset: Changeset) -> None:
        """Send and commit; on failure discard/roll back, then raise a ShimError."""

    def close(self) -> None:  # noqa: B027 - drivers without a session have nothing to close
        """Close any session the driver keeps open."""

    def flush_save(self) -> bool:
        """Save now if a debounced save is pending (the worker calls it when idle); True if saved."""
        return False

    # -- the shared recipe ----------------------------------------------------------------------
    def plan(self, desired: Mapping[str, PortConfig]) -> Changeset:
        current = self.read(sorted(desired))
        changes = diff(current, dict(desired))
        self.check(changes)
        return self.render(changes)

    def converge(self, desired: Mapping[str, PortConfig]) -> ApplyResult:
        """Make the ports look like `desired`, sending only the difference; verify by reading back."""
        start = time.monotonic()
        changeset = self.plan(desired)
        if changeset.empty:
            return ApplyResult(self.params.name, (), committed=False, verified=True)
        self.apply(changeset)
        if self.verified_apply:
            return ApplyResult(
                self.params.name, changeset.changes, True, True, time.monotonic() - start
            )
        after = self.read(sorted(desired))
        wrong = [p for p, want in desired.items() if not same(after.get(p), want)]
        if wrong:
            raise VerifyError(
                f"{self.params.name}: after commit, {', '.join(wrong)} differ from what was asked"
            )
        return ApplyResult(
            self.params.name, changeset.changes, True, True, time.monotonic() - start
        )


def same(actual: PortConfig | None, want: PortConfig) -> bool:
    """Equal for what the shim manages (a released access port may read back as VLAN 1)."""
    if actual is None:
        return False
    released_trunk = want.mode == "trunk" and not want.trunk_vlans and want.native_vlan is None
    if (
        released_trunk
        and actual.mode is None
        and not actual.trunk_vlans
        and actual.native_vlan is None
    ):
        return True  # Linux/Cumulus: a released trunk leaves its bridges and reads back unmanaged
    if want.mode == "access" and want.access_vlan is None:
        return actual.mode in ("access", None) and actual.access_vlan in (None, 1)
    return (actual.mode, actual.access_vlan, actual.native_vlan, actual.trunk_vlans) == (
        want.mode,
        want.access_vlan,
        want.native_vlan,
        want.trunk_vlans,
    )


_REGISTRY: dict[str, type[SwitchDriver]] = {}


def register(cls: type[SwitchDriver]) -> type[SwitchDriver]:
    """Class decorator: make a driver available by its name."""
    _REGISTRY[cls.name] = cls
    return cls


def driver_class(name: str) -> type[SwitchDriver]:
    from torshim import drivers  # noqa: F401 - importing the package registers every driver

    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedError(
            f"unknown driver {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def driver_names() -> list[str]:
    from torshim import drivers  # noqa: F401

    return sorted(_REGISTRY)
