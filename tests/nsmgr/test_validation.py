"""Bad requests: each is refused with one clear line, of the kind the gRPC status follows, and
nothing changes: not the node's links, not the pods, not the journal."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from nicinventory.fakesysfs import FakeSysfs
from nsmgr.agent import Agent
from nsmgr.errors import ConflictError, ForbiddenError, NotFoundError
from nsmgr.model import AttachRequest, PodRef, RequestError, ServiceRef
from tests.conftest import needs_root
from tests.nsmgr.node import PF_PCI, SERVICE, FakeNode, ip, links

pytestmark = [needs_root, pytest.mark.netns]
POD = PodRef("default", "web-1", "uid-1")


def journal_files(node: FakeNode) -> dict[str, bytes]:
    d = os.path.join(node.state_dir, "vfs")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


Case = Callable[[FakeNode, Agent, str], tuple[AttachRequest, str | None]]


def req(node: FakeNode, where: str, /, **kw: Any) -> AttachRequest:
    fields: dict[str, Any] = {
        "service": ServiceRef.parse(SERVICE),
        "pci_address": node.vfs[1],
        "netns": where,
        "ifname": "nsm0",
        "pod": POD,
    }
    fields.update(kw)
    return AttachRequest(**fields)


CASES: dict[str, tuple[Case, type[Exception], str]] = {
    "unknown device": (
        lambda n, a, p: (req(n, p, pci_address="0000:3b:09.7"), None),
        NotFoundError,
        "no PCI device 0000:3b:09.7 on this node",
    ),
    "not a PCI address": (
        lambda n, a, p: (req(n, p, pci_address="3b:01.2"), None),
        RequestError,
        "device '3b:01.2' is not a PCI address like 0000:3b:01.2",
    ),
    "a PF, not a VF": (
        lambda n, a, p: (req(n, p, pci_address=PF_PCI), None),
        RequestError,
        f"device {PF_PCI} is not an SR-IOV VF (it has no physfn)",
    ),
    "netns that does not exist": (
        lambda n, a, p: (req(n, p, netns="/run/netns/nsmtest-absent"), None),
        NotFoundError,
        "network namespace /run/netns/nsmtest-absent does not exist",
    ),
    "netns path that is no netns": (
        lambda n, a, p: (req(n, p, netns=os.path.join(n.root, "plain.file")), None),
        RequestError,
        "plain.file is not a network namespace",
    ),
    "interface name too long": (
        lambda n, a, p: (req(n, p, ifname="a" * 16), None),
        RequestError,
        "interface name 'aaaaaaaaaaaaaaaa' is invalid: 1-15 characters",
    ),
    "interface name with a slash": (
        lambda n, a, p: (req(n, p, ifname="eth/0"), None),
        RequestError,
        "interface name 'eth/0' is invalid",
    ),
    "interface name with a space": (
        lambda n, a, p: (req(n, p, ifname="eth 0"), None),
        RequestError,
        "interface name 'eth 0' is invalid",
    ),
    "interface name taken in the pod": (
        lambda n, a, p: (req(n, p, ifname="busy0"), None),
        ConflictError,
        "interface name busy0 already exists in the pod's network namespace",
    ),
    "interface name taken as an altname in the pod": (
        lambda n, a, p: (req(n, p, ifname="busyalt"), None),
        ConflictError,
        "interface name busyalt already exists",
    ),
    "unknown service": (
        lambda n, a, p: (req(n, p, service=ServiceRef.parse("other.example.com")), None),
        NotFoundError,
        "unknown network service other.example.com (known here: myns.example.com, open.example.com)",
    ),
    "namespace not admitted": (
        lambda n, a, p: (req(n, p, pod=PodRef("kube-system", "x", "u")), None),
        ForbiddenError,
        "network service myns.example.com does not admit namespace 'kube-system' (allowed: default, myns)",
    ),
    "no pod for a restricted service": (
        lambda n, a, p: (req(n, p, pod=None), None),
        ForbiddenError,
        "does not admit a request without a pod",
    ),
    "device of another pod": (
        lambda n, a, p: (req(n, p, pci_address=n.vfs[0]), None),
        ConflictError,
        "device {vf0} is held by connection held-1 (pod default/other)",
    ),
    "connection id of another device": (
        lambda n, a, p: (req(n, p, connection_id="held-1"), None),
        ConflictError,
        "connection id held-1 is already used for {vf0}",
    ),
    "mechanism that does not fit the VF": (
        lambda n, a, p: (req(n, p), "VFIO"),
        RequestError,
        "VF {vf1} is a kernel netdev: mechanism VFIO does not apply",
    ),
    "unknown mechanism": (
        lambda n, a, p: (req(n, p), "MEMIF"),
        RequestError,
        "mechanism 'MEMIF' is not KERNEL or VFIO",
    ),
    "VF whose netdev left the node": (
        lambda n, a, p: (req(n, p, pci_address=n.vfs[3]), None),
        ConflictError,
        "VF {vf3}'s netdev vf3 is not in the node's network namespace",
    ),
    "VF without netdev or vfio-pci": (
        lambda n, a, p: (req(n, p, pci_address=n.vfs[2]), None),
        ConflictError,
        "VF {vf2} has no netdev and is not bound to vfio-pci (driver: none)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_one_clear_error_and_no_change(
    node: FakeNode, make_agent: Callable[..., Agent], case: str
) -> None:
    agent = make_agent()
    other_pod = node.pod()
    held = agent.request(
        AttachRequest(
            ServiceRef.parse(SERVICE), node.vfs[0], other_pod, "nsm0",
            PodRef("default", "other", "u0"), connection_id="held-1",
        )
    )  # fmt: skip
    pod = node.pod()
    p = os.path.basename(pod)
    ip("link", "add", "busy0", "type", "veth", "peer", "name", "busy0p", ns=p)
    ip("link", "property", "add", "dev", "busy0p", "altname", "busyalt", ns=p)
    ip("link", "del", "vf3", ns=node.ns)  # sysfs still names it, but it is not on the node
    FakeSysfs(node.sysfs).unbind(node.vfs[2])
    with open(os.path.join(node.root, "plain.file"), "w") as f:
        f.write("{}")
    before = (node.links(), links(p), links(os.path.basename(other_pod)), journal_files(node))

    make, kind, message = CASES[case]
    request, mechanism = make(node, agent, pod)
    with pytest.raises(kind) as e:
        agent.request(request, mechanism)
    want = message.format(vf0=node.vfs[0], vf1=node.vfs[1], vf2=node.vfs[2], vf3=node.vfs[3])
    assert want in str(e.value)
    assert "\n" not in str(e.value)
    after = (node.links(), links(p), links(os.path.basename(other_pod)), journal_files(node))
    assert after == before
    assert agent.connections() == [held]
