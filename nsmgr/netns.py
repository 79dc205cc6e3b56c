"""Network namespaces by path, fd and inode: open one safely, name it as NSM does
(`inode://<dev>/<ino>`), find one from such a URL, and make a netlink socket inside one.

A socket is made in another namespace by a short-lived thread that setns()es itself: the network
namespace is per thread on Linux, the socket keeps the namespace it was made in, and the rest of
the process (gRPC's threads, the tests' subprocesses) never changes namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import socket
import stat
import threading
from dataclasses import dataclass

from nsmgr.errors import NotFoundError
from nsmgr.model import RequestError

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3): which kind of namespace an nsfs fd is
NETNS_RUN_DIR = "/run/netns"
_INODE_URL_RE = re.compile(r"^inode://(\d+)/(\d+)$")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class NetnsId:
    """What identifies a namespace for as long as it lives (a path can be reused, this cannot)."""

    dev: int
    ino: int

    @property
    def url(self) -> str:
        return f"inode://{self.dev}/{self.ino}"


def netns_path(text: str) -> str:
    """A path from what people and NSM clients write: a pid, `file://...`, a name under /run/netns."""
    text = text.strip()
    if text.isdigit():
        return f"/proc/{text}/ns/net"
    if text.startswith("file://"):
        return text[len("file://") :]
    if text and "/" not in text:
        return os.path.join(NETNS_RUN_DIR, text)
    return text


def open_netns(path: str) -> int:
    """An O_RDONLY fd of the network namespace at `path`; RequestError (NotFoundError) otherwise."""
    try:
        # O_NONBLOCK: a FIFO given by mistake must not hang the request
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFoundError(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise RequestError(f"network namespace {path}: {e.strerror}") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise RequestError(f"{path} is not a network namespace")
    return fd


def netns_id(fd: int) -> NetnsId:
    st = os.fstat(fd)
    return NetnsId(st.st_dev, st.st_ino)


def own_netns_fd() -> int:
    """The calling thread's own network namespace."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def parse_inode_url(url: str) -> NetnsId:
    m = _INODE_URL_RE.match(url.strip())
    if not m:
        raise RequestError(f"inodeURL {url!r} is not inode://<dev>/<ino>")
    return NetnsId(int(m.group(1)), int(m.group(2)))


def find_by_inode(want: NetnsId) -> str:
    """A path to the namespace `want`: a name under /run/netns, else some process's ns/net.
    O(processes), so only for requests that give nothing but an inodeURL (NSM clients do)."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += [os.path.join(NETNS_RUN_DIR, n) for n in sorted(os.listdir(NETNS_RUN_DIR))]
    with contextlib.suppress(OSError):
        candidates += [f"/proc/{p}/ns/net" for p in os.listdir("/proc") if p.isdigit()]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue  # a process that ended meanwhile
        if (st.st_dev, st.st_ino) == (want.dev, want.ino) and not stat.S_ISDIR(st.st_mode):
            return path
    raise NotFoundError(f"no network namespace {want.url} on this node")


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netlink_socket(netns_fd: int | None = None) -> socket.socket:
    """An NETLINK_ROUTE socket in the namespace of `netns_fd` (None: the caller's own)."""
    if netns_fd is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    out: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            setns(netns_fd)  # this thread only; it ends right after
            out.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=make, name="nsmgr-setns", daemon=True)
    t.start()
    t.join()
    result = out[0] if out else OSError(errno.EIO, "setns thread gave nothing")
    if isinstance(result, BaseException):
        raise result
    return result


def still_there(path: str, inode_url: str) -> bool:
    """The namespace is still reachable where a request named it (a pid's or a bind mount's
    path) and it is the same one. An fd held keeps a namespace existing, not reachable: this is
    how nsmgr sees that a pod went."""
    if not path or not inode_url:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    want = parse_inode_url(inode_url)
    return (st.st_dev, st.st_ino) == (want.dev, want.ino)


class HeldNamespaces:
    """Pod namespaces held open while their connections live, by key (a VF's PCI address)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def hold(self, key: str, fd: int) -> None:
        with self._lock:
            old = self._fds.get(key)
            self._fds[key] = fd
        if old is not None and old != fd:
            os.close(old)

    def holds(self, fd: int) -> bool:
        with self._lock:
            return fd in self._fds.values()

    def release(self, key: str) -> None:
        with self._lock:
            fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def reopen(self, key: str, path: str, inode_url: str) -> int | None:
        """The fd held for `key`, else (after a restart) the namespace reopened if `path` still
        leads to the same one, then held; None when it is gone."""
        with self._lock:
            fd = self._fds.get(key)
        if fd is not None:
            return fd
        if not still_there(path, inode_url):
            return None
        try:
            fd = open_netns(path)
        except RequestError:
            return None
        if netns_id(fd).url != inode_url:  # replaced between the stat and the open
            os.close(fd)
            return None
        self.hold(key, fd)
        return fd

    def close_all(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)
