"""Netdev plumbing of a VF: into the pod (move and rename in one message, then MTU, MAC,
addresses, up, routes) and back (down, MAC, MTU, stale altnames, then move and rename back in one
message; fixed up and verified on the node).

Back works from wherever the VF is: in the pod's namespace, or already on the node because the
pod's namespace vanished (the kernel hands a physical netdev back to the initial namespace,
renamed `devN` when its name is taken there). On the node the VF is looked up by its recorded
ifindex, its original name, its pod name and the name sysfs gives. Each candidate must prove it is
the VF (vfstate.is_the_vf): its PCI parent on real hardware, else its MAC and kind, because a fake
sysfs tree cannot follow the kernel's renames and names and ifindexes are reused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator

from nsmgr.endpoint import EndpointContext
from nsmgr.errors import ConflictError, NetlinkError, NsmgrError, RestoreError
from nsmgr.model import RequestError
from nsmgr.netlink import LinkInfo, Rtnl
from nsmgr.netns import netns_id, open_netns, own_netns_fd
from nsmgr.vfstate import HostLink, is_the_vf, locate_vf, pci_device_exists


class Node:
    """The node's network namespace: where VFs live when no pod has them. Lends netlink sockets
    in it from a small pool (one per concurrent operation, reused)."""

    def __init__(self, netns_path: str | None = None) -> None:
        self.path = netns_path
        self.fd = open_netns(netns_path) if netns_path else own_netns_fd()
        self.id = netns_id(self.fd)
        # The kernel returns netdevs of a vanished namespace to the initial one: when the node is
        # another namespace (the lab), that is where a lost VF is looked for too.
        self.init_fd = _init_netns_fd() if self.id.ino != INIT_NET_INO else None
        self._sock_ns = self.fd if netns_path else None  # None: make sockets right here
        self._idle: list[Rtnl] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def rtnl(self) -> Iterator[Rtnl]:
        with self._lock:
            rt = self._idle.pop() if self._idle else None
        if rt is None:
            rt = Rtnl(self._sock_ns)
        broken = True
        try:
            yield rt
            broken = False
        except (NsmgrError, RequestError):
            broken = False  # a refusal (NetlinkError included), not a broken socket
            raise
        finally:  # an OSError (a timeout, say) may leave replies in flight: not reused
            if broken:
                rt.close()
            else:
                with self._lock:
                    self._idle.append(rt)

    def close(self) -> None:
        with self._lock:
            for rt in self._idle:
                rt.close()
            self._idle.clear()
        os.close(self.fd)
        if self.init_fd is not None:
            os.close(self.init_fd)


INIT_NET_INO = 0xEFFFFFF9  # PROC_NET_INIT_INO: the initial namespace's inode, fixed since 3.8


def _init_netns_fd() -> int | None:
    """The initial namespace, if this process can reach it (pid 1's, or its own)."""
    for path in ("/proc/1/ns/net", "/proc/thread-self/ns/net"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # pid 1 may be out of reach (a sandbox, no CAP_SYS_PTRACE)
        if netns_id(fd).ino == INIT_NET_INO:
            return fd
        os.close(fd)
    return None


def fallback_name(ifindex: int) -> str:
    """Where a VF waits on the node when its own name is taken there."""
    return f"nsmr{ifindex}"[:15]


# -- into the pod ---------------------------------------------------------------------------------
def move_in(node: Node, host: HostLink, pod_fd: int, ifname: str) -> None:
    with node.rtnl() as rt:
        try:
            rt.move(
                host.ifindex, pod_fd, ifname, what=f"move {host.ifname} into the pod as {ifname}"
            )
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                raise ConflictError(
                    f"interface name {ifname} already exists in the pod's network namespace"
                ) from e
            raise


def configure(pod: Rtnl, ifname: str, ctx: EndpointContext, mac: str | None) -> int:
    """MTU and MAC, addresses, up, routes (a gateway route needs the link up and its address),
    through a socket in the pod's namespace. Returns the VF's ifindex there."""
    link = pod.get_link(name=ifname)
    if link is None:
        raise RestoreError(f"{ifname} vanished from the pod's namespace right after the move")
    mtu = ctx.mtu if ctx.mtu is not None and ctx.mtu != link.mtu else None
    if mtu is not None or mac is not None:
        what = " ".join(f"{k} {v}" for k, v in (("mtu", mtu), ("address", mac)) if v is not None)
        pod.set_link(link.index, mtu=mtu, mac=mac, what=f"set {ifname} {what}")
    for address in ctx.addresses:
        pod.add_address(link.index, address)
    pod.set_link(link.index, up=True, what=f"set {ifname} up")
    for r in ctx.routes:
        pod.add_route(link.index, r.prefix, r.via)
    return link.index


# -- back to the node -----------------------------------------------------------------------------
def _first(
    candidates: Iterator[LinkInfo | None],
    pci: str,
    macs: set[str],
    kind: str | None,
    index: int | None = None,
) -> LinkInfo | None:
    seen: set[int] = set()
    for link in candidates:
        if link is None or link.index in seen:
            continue
        seen.add(link.index)
        if is_the_vf(link, pci, macs, kind, index):
            return link
    return None


def _in_pod(
    rt: Rtnl, orig: HostLink, pod_ifname: str, pod_ifindex: int | None
) -> Iterator[LinkInfo | None]:
    if pod_ifname:
        yield rt.get_link(name=pod_ifname)
    for index in (pod_ifindex, orig.ifindex):
        if index:
            yield rt.get_link(index=index)


def _on_node(
    rt: Rtnl, orig: HostLink, pod_ifname: str, sysfs_name: str | None
) -> Iterator[LinkInfo | None]:
    yield rt.get_link(index=orig.ifindex)
    for name in (orig.ifname, pod_ifname, fallback_name(orig.ifindex), sysfs_name):
        if name:
            yield rt.get_link(name=name)


def return_from_pod(
    node: Node,
    pci: str,
    orig: HostLink,
    macs: set[str],
    pod_fd: int,
    pod_ifname: str = "",
    pod_ifindex: int | None = None,
) -> bool:
    """If the VF is in the pod's namespace: down, MAC and MTU, stale altnames, then out to the
    node and renamed back in one message. False when it is not there."""
    with Rtnl(pod_fd) as pod:
        candidates = _in_pod(pod, orig, pod_ifname, pod_ifindex)
        link = _first(candidates, pci, macs | {orig.mac}, orig.kind, pod_ifindex)
        if link is None:
            return False
        _return_from_pod(pod, link, orig, node.fd)
    return True


def restore_on_node(
    node: Node,
    pci: str,
    orig: HostLink,
    macs: set[str],
    pod_ifname: str = "",
    sysfs_root: str = "/sys",
    elsewhere: int | None = None,
) -> str:
    """Find the VF's netdev on the node, put it back as `orig`, read it back. "restored", or
    "gone" when the PCI function itself has left the node; RestoreError otherwise.

    `elsewhere` is the initial namespace's fd when the node is another one (the lab): the kernel
    hands netdevs of a vanished namespace back to the initial one, so the VF is fetched from
    there."""
    macs = macs | {orig.mac}
    try:
        sysfs_name = locate_vf(sysfs_root, pci).ifname
    except RequestError:  # the VF left sysfs: only the recorded names remain
        sysfs_name = None
    with node.rtnl() as rt:
        link = _first(_on_node(rt, orig, pod_ifname, sysfs_name), pci, macs, orig.kind)
        if link is None and elsewhere is not None:
            with Rtnl(elsewhere) as init:
                there = _first(_on_node(init, orig, pod_ifname, sysfs_name), pci, macs, orig.kind)
                if there is not None:
                    _move_to_node(init, there, orig, node.fd)
            link = _first(_on_node(rt, orig, pod_ifname, sysfs_name), pci, macs, orig.kind)
        if link is None:
            if not pci_device_exists(sysfs_root, pci):
                return "gone"
            raise RestoreError(
                f"VF {pci}: its netdev is neither in the pod's nor the node's namespace"
            )
        _fix_on_node(rt, link, orig, pci)
        got = rt.get_link(index=link.index)
        diffs = _differences(got, orig) if got else ["the link vanished"]
        if diffs:
            raise RestoreError(f"VF {pci} is back on the node but differs: {'; '.join(diffs)}")
    return "restored"


def _return_from_pod(pod: Rtnl, link: LinkInfo, orig: HostLink, node_fd: int) -> None:
    """Inside the pod: down, original name, MAC and MTU, stale altnames dropped; then out."""
    if link.up:
        pod.set_link(link.index, up=False, what=f"set {link.name} down")
    mac = orig.mac if link.mac != orig.mac else None
    mtu = orig.mtu if link.mtu != orig.mtu else None
    name = orig.ifname if link.name != orig.ifname else None
    if mac is not None or mtu is not None or name is not None:
        try:
            pod.set_link(link.index, name=name, mac=mac, mtu=mtu, what=f"restore {link.name}")
        except NetlinkError as e:
            if e.errno != errno.EEXIST or name is None:
                raise
            # the pod has a link of that name: the move names it instead
            if mac is not None or mtu is not None:
                pod.set_link(link.index, mac=mac, mtu=mtu, what=f"restore {link.name} mac/mtu")
    stale = tuple(a for a in link.altnames if a not in orig.altnames)
    pod.altnames(link.index, remove=stale)
    _move_to_node(pod, link, orig, node_fd)


def _move_to_node(rt: Rtnl, link: LinkInfo, orig: HostLink, node_fd: int) -> None:
    """Out to the node as `orig.ifname`. The kernel moves a link under its current name when
    that is free over there (then renames it: a taken name fails after the move) and uses the
    name asked only when the current one is taken. So EEXIST means either "moved, not renamed"
    (the node-side fix says why) or "not moved": then it goes under a name of its own."""
    try:
        rt.move(link.index, node_fd, orig.ifname, what=f"move {link.name} back as {orig.ifname}")
    except NetlinkError as e:
        if e.errno != errno.EEXIST:
            raise
        if rt.get_link(index=link.index) is None:
            return  # moved; the rename is what failed
        temp = fallback_name(orig.ifindex)
        rt.move(link.index, node_fd, temp, what=f"move {link.name} back as {temp}")


def _fix_on_node(rt: Rtnl, link: LinkInfo, orig: HostLink, pci: str) -> None:
    name = orig.ifname if link.name != orig.ifname else None
    mac = orig.mac if link.mac != orig.mac else None
    mtu = orig.mtu if link.mtu != orig.mtu else None
    if link.up and (name or mac or not orig.up):
        rt.set_link(link.index, up=False, what=f"set {link.name} down")
    if name or mac or mtu:
        try:
            rt.set_link(link.index, name=name, mac=mac, mtu=mtu, what=f"restore {link.name}")
        except NetlinkError as e:
            if e.errno == errno.EEXIST and name:
                raise RestoreError(
                    f"VF {pci} waits on the node as {link.name}: its name {orig.ifname} is "
                    "taken by another link"
                ) from e
            raise
    stale = tuple(a for a in link.altnames if a not in orig.altnames)
    missing = tuple(a for a in orig.altnames if a not in link.altnames)
    rt.altnames(link.index, remove=stale, add=missing)
    if orig.up:
        rt.set_link(link.index, up=True, what=f"set {orig.ifname} up")


def _differences(got: LinkInfo, orig: HostLink) -> list[str]:
    out = []
    for what, have, want in (
        ("name", got.name, orig.ifname),
        ("mac", got.mac, orig.mac),
        ("mtu", got.mtu, orig.mtu),
        ("up", got.up, orig.up),
        ("altnames", sorted(got.altnames), sorted(orig.altnames)),
    ):
        if have != want:
            out.append(f"{what} {have} (want {want})")
    return out
