"""Fixtures of the pod integration's tests: stand-ins on real unix sockets in short temp dirs
(a unix socket path has at most 107 bytes), fake /proc trees, and a check that no thread of
ours outlives its test."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsmgr.pods.netns import NetnsResolver
from nsmgr.pods.podresources import PodResourcesClient
from tests.nsmgr.pods.standins import CriStandIn, PodResourcesStandIn


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        ours = [t.name for t in threading.enumerate() if t.name.startswith("nsm-pods")]
        if not ours:
            return
        time.sleep(0.02)
    raise AssertionError(f"threads left running: {ours}")


@pytest.fixture
def sockdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="nsp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kubelet(sockdir: str) -> Iterator[PodResourcesStandIn]:
    with PodResourcesStandIn(os.path.join(sockdir, "pr.sock")) as k:
        yield k


@pytest.fixture
def runtime(sockdir: str) -> Iterator[CriStandIn]:
    with CriStandIn(os.path.join(sockdir, "cri.sock")) as r:
        yield r


@pytest.fixture
def resources(kubelet: PodResourcesStandIn) -> Iterator[PodResourcesClient]:
    client = PodResourcesClient(kubelet.socket_path, timeout=2.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """An empty fake /proc with a host init (pid 1) in the "host" namespace."""
    root = tmp_path / "proc"
    add_process(root, 1, "0::/init.scope\n", ns=None)
    return root


@pytest.fixture
def resolver(runtime: CriStandIn, proc_root: Path) -> Iterator[NetnsResolver]:
    r = NetnsResolver("unix://" + runtime.socket_path, str(proc_root), timeout=2.0)
    try:
        yield r
    finally:
        r.close()


def add_process(root: Path, pid: int, cgroup: str, ns: str | None) -> Path:
    """/proc/<pid>/cgroup and ns/net; `ns` names a namespace file to link to (a real
    /run/netns/x, or one made by `netns_file`), None the host's (pid 1's)."""
    d = root / str(pid)
    (d / "ns").mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(cgroup)
    target = ns if ns is not None else str(netns_file(root, "host"))
    link = d / "ns" / "net"
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    return link


def netns_file(root: Path, name: str) -> Path:
    """A stand-in namespace: a file whose (dev, inode) identifies it, as nsfs files do."""
    f = root.parent / "netns" / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.touch()
    return f
