"""Names in the registry: `name[@domain]`, where both parts are DNS-style names.

- A service or endpoint name is a DNS-1123 subdomain (what Kubernetes accepts as an object name,
  so the CRD store can use it as is): dot-separated labels of lower-case letters, digits and `-`,
  not starting or ending with `-`, 1-63 characters each, 253 in all. nsmgr's `ServiceRef` accepts
  the same set (a test holds the two together).
- A domain is a DNS name: labels of letters, digits and `-` (compared without case, kept in lower
  case), a trailing dot allowed and dropped, 253 characters in all.
- No `@`, or `@` + this registry's own domain: the name is local. Anything else after `@` is a remote
  domain, whose registry is found by DNS SRV `_nsregistry._tcp.<domain>`.

Errors are one line that says what is wrong with which part: `svc@` (nothing after `@`), `@dom`
(nothing before it), `a@b@c`, an empty label (`a..b`), a label over 63 characters.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nsmgr.registry.errors import InvalidName

MAX_NAME = 253  # RFC 1035 / DNS-1123 subdomain
MAX_LABEL = 63
# Used with fullmatch: `$` would let a trailing newline through.
_NAME_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_DOMAIN_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


def _show(text: str) -> str:
    """The offending text for a message: quoted, one line, not a page long."""
    return repr(text if len(text) <= 72 else text[:69] + "...")


def _labels(text: str, label_re: re.Pattern[str], allowed: str) -> str | None:
    """Why `text` is not a DNS-style name, or None when it is one."""
    if not text:
        return "it is empty"
    if len(text) > MAX_NAME:
        return f"it has {len(text)} characters (at most {MAX_NAME})"
    for label in text.split("."):
        if not label:
            return "it has an empty label (a leading, trailing or doubled '.')"
        if len(label) > MAX_LABEL:
            return f"label {_show(label)} has {len(label)} characters (at most {MAX_LABEL})"
        if not label_re.fullmatch(label):
            return f"label {_show(label)} is not {allowed}, with no '-' at either end"
    return None


def check_name(text: str, what: str = "name") -> str:
    """`text` if it is a valid service or endpoint name (no domain part), else InvalidName."""
    why = _labels(text, _NAME_LABEL_RE, "lower-case letters, digits and '-'")
    if why:
        raise InvalidName(f"invalid {what} {_show(text)}: {why}")
    return text


def check_domain(text: str, what: str = "domain") -> str:
    """A domain in canonical form (lower case, no trailing dot), else InvalidName."""
    canonical = text[:-1] if text.endswith(".") and len(text) > 1 else text
    why = _labels(canonical, _DOMAIN_LABEL_RE, "letters, digits and '-'")
    if why:
        raise InvalidName(f"invalid {what} {_show(text)}: {why}")
    return canonical.lower()


@dataclass(frozen=True)
class Qualified:
    """`name@domain`; an empty domain is the local one."""

    name: str
    domain: str = ""

    @property
    def is_remote(self) -> bool:
        return bool(self.domain)

    def __str__(self) -> str:
        return f"{self.name}@{self.domain}" if self.domain else self.name


def parse(text: str, local_domain: str = "", what: str = "name") -> Qualified:
    """`name[@domain]` checked; `@local_domain` is dropped, so local names compare equal.

    `what` names the field in messages ("network service name", "endpoint name")."""
    name, at, domain = text.partition("@")
    if at:
        if not name:
            raise InvalidName(f"invalid {what} {_show(text)}: nothing before '@'")
        if not domain:
            raise InvalidName(
                f"invalid {what} {_show(text)}: nothing after '@' (name a domain, or drop the '@' "
                "for the local one)"
            )
        if "@" in domain:
            raise InvalidName(f"invalid {what} {_show(text)}: more than one '@'")
    check_name(name, what)
    if not at:
        return Qualified(name)
    dom = check_domain(domain, f"domain of {what} {_show(text)}")
    return Qualified(name, "" if dom == local_domain else dom)


def grpc_target(url: str) -> str:
    """An NSM URL (`tcp://host:port`, `unix:///path`) as a gRPC channel target."""
    return url.removeprefix("tcp://")


def check_url(url: str, what: str = "url") -> str:
    """An endpoint's URL as NSM writes them: `tcp://host:port` (host an IPv4 address, `[IPv6]` or
    a DNS name) or `unix:///absolute/path` (at most 107 bytes, the kernel's limit); else
    InvalidName."""
    scheme, sep, rest = url.partition("://")
    if scheme == "unix" and sep:
        if not rest.startswith("/") or len(rest.encode()) > 107 or "\0" in rest:
            raise InvalidName(
                f"invalid {what} {_show(url)}: unix:// needs an absolute path of at most 107 bytes"
            )
        return url
    if scheme == "tcp" and sep:
        host, colon, port = rest.rpartition(":")
        if colon and port.isdigit() and 0 < int(port) < 65536 and host:
            if host.startswith("[") and host.endswith("]"):
                try:
                    ipaddress.IPv6Address(host[1:-1])
                    return url
                except ValueError:
                    pass
            else:
                try:
                    ipaddress.IPv4Address(host)
                    return url
                except ValueError:
                    if _labels(host, _DOMAIN_LABEL_RE, "") is None:
                        return url
        raise InvalidName(f"invalid {what} {_show(url)}: tcp:// needs host:port")
    raise InvalidName(f"invalid {what} {_show(url)}: give tcp://host:port or unix:///path")
