"""Both annotation forms, from tables: what a pod asks for, and the one line a bad value gets."""

from __future__ import annotations

import pytest

from nsmgr.model import RequestError, ServiceRef
from nsmgr.pods.annotations import NSM_KEY, SEED_KEY, PodService, parse_annotations


def svc(text: str, ifname: str, labels: dict[str, str] | None = None, mech: str = "") -> PodService:
    return PodService(ServiceRef.parse(text), ifname, labels or {}, mech)


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, []),
        ({"other": "x"}, []),
        ({SEED_KEY: "myns.example.com"}, [svc("myns.example.com", "nsm0")]),
        (
            {SEED_KEY: "a.example.com, b@dc.example.org ,c"},
            [svc("a.example.com", "nsm0"), svc("b@dc.example.org", "nsm1"), svc("c", "nsm2")],
        ),
        ({SEED_KEY: "a,a"}, [svc("a", "nsm0"), svc("a", "nsm1")]),  # two VFs, one service
        ({NSM_KEY: "kernel://svc/nsm-1"}, [svc("svc", "nsm-1", mech="KERNEL")]),
        (
            {NSM_KEY: "kernel://svc@dc.example.org/eth1?app=x&tier=db"},
            [svc("svc@dc.example.org", "eth1", {"app": "x", "tier": "db"}, "KERNEL")],
        ),
        ({NSM_KEY: "KERNEL://svc"}, [svc("svc", "nsm0", mech="KERNEL")]),
        ({NSM_KEY: "kernel://svc?app="}, [svc("svc", "nsm0", {"app": ""}, "KERNEL")]),
        # defaults skip the names given explicitly
        (
            {NSM_KEY: "kernel://a/nsm0, kernel://b, vfio://c"},
            [
                svc("a", "nsm0", mech="KERNEL"),
                svc("b", "nsm1", mech="KERNEL"),
                svc("c", "nsm2", mech="VFIO"),
            ],
        ),
    ],
)
def test_parses(annotations: dict[str, str], expected: list[PodService]) -> None:
    assert parse_annotations(annotations) == expected


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({SEED_KEY: ""}, f"annotation {SEED_KEY} is empty"),
        ({SEED_KEY: "  "}, f"annotation {SEED_KEY} is empty"),
        ({SEED_KEY: "a,,b"}, "item 2 of 'a,,b' is empty"),
        ({SEED_KEY: "a,"}, "item 2 of 'a,' is empty"),
        ({SEED_KEY: "svc@"}, "network service 'svc@' has a bad domain after '@'"),
        ({SEED_KEY: "@dom"}, "network service '@dom' is not a DNS-style name"),
        ({SEED_KEY: "My_Service"}, "is not a DNS-style name"),
        ({SEED_KEY: "kernel://svc/nsm1"}, f"go in {NSM_KEY}: kernel://service/ifname"),
        ({SEED_KEY: "svc/nsm1"}, "is not service[@domain]"),
        ({NSM_KEY: "svc"}, "'svc' is not a URL like kernel://service[@domain][/ifname]"),
        ({NSM_KEY: "memif://svc/m0"}, "mechanism 'memif' in 'memif://svc/m0' is not supported"),
        ({NSM_KEY: "kernel://svc/this-name-is-too-long"}, "interface name 'this-name-is-too-long'"),
        ({NSM_KEY: "kernel://svc/a:b"}, "interface name 'a:b'"),
        ({NSM_KEY: "kernel://svc/a/b"}, "more than one '/'"),
        ({NSM_KEY: "kernel:///nsm0"}, "network service '' is not a DNS-style name"),
        ({NSM_KEY: "kernel://svc@/nsm0"}, "bad domain after '@'"),
        ({NSM_KEY: "kernel://svc?novalue"}, "labels in 'kernel://svc?novalue' are not key=value"),
        ({NSM_KEY: "kernel://a/eth1, kernel://b/eth1"}, "interface name 'eth1' is used twice"),
        ({SEED_KEY: "a", NSM_KEY: "kernel://b"}, "use one of them"),
    ],
)
def test_refuses_with_one_clear_line(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_annotations(annotations)
    text = str(err.value)
    assert message in text
    assert "\n" not in text
    # the line names the annotation, so the user knows where to look
    assert SEED_KEY in text or NSM_KEY in text
