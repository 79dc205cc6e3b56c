"""What the NETCONF flavours share: a kept-open session, render to one XML document, read through
a subtree filter. Each flavour supplies its XML (`render_xml`, `read_filter`, `parse_ports`) and
how it commits (`commit`); the vendor's document shape stays in its own file."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from lxml import etree

from torshim import validate
from torshim.drivers.base import SwitchDriver, SwitchParams
from torshim.errors import ValidationError
from torshim.model import Changeset, PortChange, PortConfig
from torshim.netconf import NetconfSession


class NetconfDriver(SwitchDriver):
    transport: ClassVar[Literal["netconf", "cli"]] = "netconf"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"trunk", "access", "native-vlan", "confirmed-commit", "candidate"}
    )
    device_params: ClassVar[Mapping[str, Any] | None] = None  # ncclient's device handler
    verified_apply: ClassVar[bool] = True  # every commit path runs verify_read_back

    def __init__(self, params: SwitchParams, session: NetconfSession | None = None) -> None:
        super().__init__(params)
        self._session = session

    @property
    def session(self) -> NetconfSession:
        """Opened on first use and kept (reconnected when it died)."""
        if self._session is None:
            self._session = NetconfSession(
                self.params, dict(self.device_params) if self.device_params else None
            )
        return self._session

    # -- the flavour's XML ----------------------------------------------------------------------
    @staticmethod
    @abc.abstractmethod
    def render_xml(changes: Sequence[PortChange]) -> str: ...

    @staticmethod
    @abc.abstractmethod
    def read_filter(ports: Sequence[str]) -> etree._Element: ...

    @staticmethod
    @abc.abstractmethod
    def parse_ports(data: etree._Element, ports: Sequence[str]) -> dict[str, PortConfig]: ...

    @abc.abstractmethod
    def commit(self, changeset: Changeset) -> None:
        """Stage, commit, verify by reading back, confirm; leave nothing half-applied on failure."""

    # -- SwitchDriver -----------------------------------------------------------------------------
    def render(self, changes: Sequence[PortChange]) -> Changeset:
        changes = tuple(ch for ch in changes if not ch.empty)
        return Changeset(self.name, changes, xml=self.render_xml(changes))

    def read(self, ports: Sequence[str]) -> dict[str, PortConfig]:
        ports = [validate.interface(p) for p in ports]  # before any session opens
        if not ports:
            return {}
        return self.parse_ports(self.session.get_config(self.read_filter(ports)), ports)

    def apply(self, changeset: Changeset) -> None:
        if changeset.driver != self.name:
            raise ValidationError(f"a {changeset.driver} changeset given to the {self.name} driver")
        if not changeset.empty:
            self.commit(changeset)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
