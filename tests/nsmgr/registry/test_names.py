"""Names: `service[@domain]` parsing and the DNS label rules, one table."""

from __future__ import annotations

import pytest

from nsmgr.model import RequestError, ServiceRef
from nsmgr.registry import names
from nsmgr.registry.errors import InvalidName

L63, L64 = "a" * 63, "a" * 64
LOCAL = "example.com"

# text -> (name, domain) after parse(text, LOCAL), or the reason's expected fragment
GOOD = {
    "myns": ("myns", ""),
    "myns.example.com": ("myns.example.com", ""),
    "my-ns.v2": ("my-ns.v2", ""),
    "myns@example.com": ("myns", ""),  # our own domain is the local one
    "myns@EXAMPLE.com.": ("myns", ""),  # domains compare without case; a trailing dot is fine
    "myns@remote.test": ("myns", "remote.test"),
    "myns@Remote.Test": ("myns", "remote.test"),
    f"{L63}.b": (f"{L63}.b", ""),
    f"x@{L63}.test": ("x", f"{L63}.test"),
    "0svc@9.test": ("0svc", "9.test"),
}
BAD = {
    "": "it is empty",
    "svc@": "nothing after '@'",
    "@dom": "nothing before '@'",
    "@": "nothing before '@'",
    "a@b@c": "more than one '@'",
    L64: "has 64 characters (at most 63)",
    f"svc@{L64}.test": "has 64 characters (at most 63)",
    "a..b": "empty label",
    ".a": "empty label",
    "a.": "empty label",
    "svc@.": "empty",
    "svc@a..b": "empty label",
    "-svc": "no '-' at either end",
    "svc-": "no '-' at either end",
    "svc@-dom.test": "no '-' at either end",
    "MyNS": "lower-case letters",
    "my_ns": "lower-case letters",
    "my ns": "lower-case letters",
    "svc@dom_x.test": "letters, digits",
    "svc\n": "lower-case letters",
    ".".join([L63] * 4): "characters (at most 253)",
}


@pytest.mark.parametrize(("text", "want"), GOOD.items(), ids=[t[:20] for t in GOOD])
def test_good_names(text: str, want: tuple[str, str]) -> None:
    q = names.parse(text, LOCAL)
    assert (q.name, q.domain) == want
    assert str(q) == (f"{want[0]}@{want[1]}" if want[1] else want[0])
    assert q.is_remote == bool(want[1])


@pytest.mark.parametrize(("text", "reason"), BAD.items(), ids=[repr(t[:20]) for t in BAD])
def test_bad_names_say_why_in_one_line(text: str, reason: str) -> None:
    with pytest.raises(InvalidName) as e:
        names.parse(text, LOCAL, "network service name")
    msg = str(e.value)
    assert reason in msg
    assert msg.startswith("invalid ")
    assert "\n" not in msg and len(msg) < 300


# Where the two differ on purpose: the registry takes domains in any case and with a trailing dot
# (DNS does), and ServiceRef strips surrounding whitespace first.
SHARED = [t for t in [*GOOD, *BAD] if t.strip() == t and not t.endswith(".")]


@pytest.mark.parametrize("text", SHARED, ids=[repr(t[:20]) for t in SHARED])
def test_nsmgr_serviceref_accepts_the_same_names(text: str) -> None:
    """nsmgr's ServiceRef and the registry agree on what a name is."""
    try:
        names.parse(text.lower() if "@" in text else text)
        ours = True
    except InvalidName:
        ours = False
    try:
        ServiceRef.parse(text.lower() if "@" in text else text)
        theirs = True
    except RequestError:
        theirs = False
    assert ours == theirs


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("tcp://10.0.0.5:5001", True),
        ("tcp://[fd00::5]:5001", True),
        ("tcp://torshim.nsm-system.svc:5001", True),
        ("unix:///run/sriov-nsm/torshim.sock", True),
        ("", False),
        ("10.0.0.5:5001", False),
        ("tcp://10.0.0.5", False),
        ("tcp://10.0.0.5:0", False),
        ("tcp://10.0.0.5:65536", False),
        ("tcp://fd00::5:5001", False),
        ("tcp://:5001", False),
        ("unix://relative.sock", False),
        ("unix:///" + "x" * 107, False),
        ("http://10.0.0.5:80", False),
    ],
)
def test_urls(url: str, ok: bool) -> None:
    if ok:
        assert names.check_url(url) == url
    else:
        with pytest.raises(InvalidName, match="invalid url"):
            names.check_url(url)
