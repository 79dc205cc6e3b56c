"""What a pod asks for, from its annotations: which network services, under which interface names.

Two forms are understood (a pod uses one of them):

- the seed form, ``ns.networkservicemesh.io: myns.example.com, other@dc.example.org``: services in
  order, interfaces ``nsm0``, ``nsm1``, ... assigned by position;
- NSM's current form, ``networkservicemesh.io: kernel://myns@dc.example.org/nsm-1?app=x``: a
  mechanism, the service, an optional interface name and optional labels, comma-separated too.

``vfio://service`` is accepted: NSM's URLs allow it and a DPDK pod means it. The scheme is kept
as the wanted mechanism only (AttachRequest has no field for it): the agent decides by the VF's
driver (a vfio-pci VF is never moved), and the controller reports when the two disagree. Any
other scheme (memif://, ...) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from nsmgr.model import IFNAME_RE, RequestError, ServiceRef

SEED_KEY = "ns.networkservicemesh.io"
NSM_KEY = "networkservicemesh.io"
KEYS = (SEED_KEY, NSM_KEY)

MECHANISMS = {"kernel": "KERNEL", "vfio": "VFIO"}
DEFAULT_IFNAME_PREFIX = "nsm"
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")


@dataclass(frozen=True)
class PodService:
    """One requested service: the n-th of these gets the pod's n-th VF."""

    service: ServiceRef
    ifname: str
    labels: Mapping[str, str] = field(default_factory=dict)
    mechanism: str = ""  # what the pod asked for: KERNEL, VFIO, or "" (the seed form: no wish)


def is_annotated(annotations: Mapping[str, str]) -> bool:
    return any(k in annotations for k in KEYS)


def parse_annotations(annotations: Mapping[str, str]) -> list[PodService]:
    """The services a pod asks for, in order; [] when it carries neither annotation.

    Raises RequestError with one line naming the annotation and the bad item.
    """
    present = [k for k in KEYS if k in annotations]
    if not present:
        return []
    if len(present) > 1:
        # both forms at once is most likely a half-done migration: guessing would double the VFs
        raise RequestError(f"both {SEED_KEY} and {NSM_KEY} are set: use one of them")
    key = present[0]
    items = _split(key, annotations[key])
    parsed = [_seed_item(key, i) if key == SEED_KEY else _nsm_item(key, i) for i in items]
    return _assign_ifnames(key, parsed)


def _split(key: str, value: str) -> list[str]:
    if not value.strip():
        raise RequestError(f"annotation {key} is empty")
    items = [i.strip() for i in value.split(",")]
    for n, item in enumerate(items, 1):
        if not item:
            raise RequestError(f"annotation {key}: item {n} of {value!r} is empty")
    return items


# (service, explicit ifname or "", labels, mechanism)
_Item = tuple[ServiceRef, str, dict[str, str], str]


def _seed_item(key: str, item: str) -> _Item:
    if "://" in item or "/" in item:
        raise RequestError(
            f"annotation {key}: {item!r} is not service[@domain]; "
            f"interface names and mechanisms go in {NSM_KEY}: kernel://service/ifname"
        )
    return (_service(key, item), "", {}, "")


def _nsm_item(key: str, item: str) -> _Item:
    m = _SCHEME_RE.match(item)
    if not m:
        raise RequestError(
            f"annotation {key}: {item!r} is not a URL like kernel://service[@domain][/ifname]"
        )
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in MECHANISMS:
        raise RequestError(
            f"annotation {key}: mechanism {scheme!r} in {item!r} is not supported "
            f"(use {' or '.join(s + '://' for s in MECHANISMS)})"
        )
    path, _, query = rest.partition("?")
    service_text, _, ifname = path.partition("/")
    if "/" in ifname:
        raise RequestError(f"annotation {key}: {item!r} has more than one '/' after the service")
    if ifname and not IFNAME_RE.match(ifname):
        raise RequestError(
            f"annotation {key}: interface name {ifname!r} in {item!r} is invalid: "
            "1-15 characters of [A-Za-z0-9_.-]"
        )
    return (_service(key, service_text), ifname, _labels(key, item, query), MECHANISMS[scheme])


def _service(key: str, text: str) -> ServiceRef:
    try:
        return ServiceRef.parse(text)
    except RequestError as e:
        raise RequestError(f"annotation {key}: {e}") from None


def _labels(key: str, item: str, query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise RequestError(
            f"annotation {key}: labels in {item!r} are not key=value pairs joined by '&'"
        ) from None
    return dict(pairs)


def _assign_ifnames(key: str, items: list[_Item]) -> list[PodService]:
    """Explicit names stay; the others get the lowest free nsmN, in order of the items."""
    explicit = [ifname for _, ifname, _, _ in items if ifname]
    for name in explicit:
        if explicit.count(name) > 1:
            raise RequestError(f"annotation {key}: interface name {name!r} is used twice")
    taken = set(explicit)
    out: list[PodService] = []
    n = 0
    for service, ifname, labels, mechanism in items:
        if not ifname:
            while f"{DEFAULT_IFNAME_PREFIX}{n}" in taken:
                n += 1
            ifname = f"{DEFAULT_IFNAME_PREFIX}{n}"
            taken.add(ifname)
        out.append(PodService(service, ifname, labels, mechanism))
    return out
