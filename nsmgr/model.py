"""Plain data shared inside nsmgr: what a caller asks for, and what a connection is.

The agent (agent.py) takes AttachRequest and answers ConnectionInfo; the pod integration
(nsmgr/pods/) produces AttachRequests from pods and only talks to the agent through
ConnectionAgent, so either side can be tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from nicinventory.model import PCI_ADDRESS_RE

# DNS-1123 labels joined by dots (an NSM service name), then an optional @domain of the same shape.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
# Linux IFNAMSIZ is 16 with the NUL; '/' and whitespace are refused by the kernel, ':' by us.
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


class RequestError(ValueError):
    """A request that cannot be honoured as asked: the message is one line for the user."""


@dataclass(frozen=True)
class ServiceRef:
    """`service[@domain]`; an empty domain is the local one."""

    name: str
    domain: str = ""

    @classmethod
    def parse(cls, text: str) -> ServiceRef:
        name, sep, domain = text.strip().partition("@")
        if not name or not _NAME_RE.match(name) or len(name) > 253:
            raise RequestError(
                f"network service {text!r} is not a DNS-style name like myns.example.com"
            )
        if sep and (not domain or not _NAME_RE.match(domain) or len(domain) > 253):
            raise RequestError(f"network service {text!r} has a bad domain after '@'")
        return cls(name, domain)

    def __str__(self) -> str:
        return f"{self.name}@{self.domain}" if self.domain else self.name


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class AttachRequest:
    """Put the VF at `pci_address` into `netns` as `ifname`, for `service`.

    `netns` is a path (/var/run/netns/x, /proc/<pid>/ns/net). A non-empty `connection_id` makes
    the request idempotent: asking again with the same id refreshes that connection.
    """

    service: ServiceRef
    pci_address: str
    netns: str
    ifname: str = "nsm0"
    pod: PodRef | None = None
    connection_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not PCI_ADDRESS_RE.match(self.pci_address):
            raise RequestError(
                f"device {self.pci_address!r} is not a PCI address like 0000:3b:01.2"
            )
        if not IFNAME_RE.match(self.ifname):
            raise RequestError(
                f"interface name {self.ifname!r} is invalid: 1-15 characters of [A-Za-z0-9_.-]"
            )
        if not self.netns:
            raise RequestError("no network namespace given")


@dataclass(frozen=True)
class ConnectionInfo:
    """A connection as the agent knows it (what `nsmgr list` shows)."""

    id: str
    service: str
    pci_address: str
    ifname: str
    netns: str
    state: str  # attached | attaching | detaching | failed
    mechanism: str  # KERNEL (netdev moved) or VFIO (PF-side settings only)
    pod: PodRef | None = None
    pf: str = ""
    vf_index: int = -1
    vlan: int = 0
    mtu: int = 0
    addresses: tuple[str, ...] = ()
    generation: int = 0
    # added with the agent: the rest of the connection's context, for the NSM Connection and list
    netns_inode: str = ""  # inode://<dev>/<ino> of the pod's namespace
    mac: str = ""  # the MAC the connection set (PF side or netdev); "" when left as it was
    routes: tuple[str, ...] = ()  # "prefix" or "prefix via gateway"
    dns_servers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    endpoint: str = ""  # who gave the context ("local:<service>" for a service in the config)
    pf_status: str = ""  # PF-side settings: applied | nothing | skipped (pf_side none)
    error: str = ""  # why the connection is failed, or why its VF's restore is still pending


class ConnectionAgent(Protocol):
    """What the pod integration needs from the agent."""

    def request(self, req: AttachRequest) -> ConnectionInfo: ...

    def close(self, connection_id: str) -> None: ...

    def connections(self) -> list[ConnectionInfo]: ...
