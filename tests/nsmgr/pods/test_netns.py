"""Finding a pod's netns: the CRI stand-in over a real socket, fake /proc trees, and one real
process in a real cgroup and a real network namespace."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nsmgr.pods.errors import NetnsError
from nsmgr.pods.netns import NetnsResolver, same_netns
from sriov_nsm_wire.cri.runtime.v1 import api_pb2 as cri
from tests.conftest import needs_root
from tests.nsmgr.pods.conftest import add_process, netns_file
from tests.nsmgr.pods.standins import WAIT, CriStandIn

UID = "0c2e6f1a-7d3b-4f7e-9a51-3b2f1e0d9c8a"
UID_ = UID.replace("-", "_")
SYSTEMD = (
    "12:pids:/kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{UID_}.slice/cri-containerd-0a1b.scope\n"
    "0::/\n"
)
CGROUPFS = f"4:memory:/kubepods/besteffort/pod{UID}/0a1b2c\n1:cpu:/kubepods/besteffort/pod{UID}\n"
V2_SYSTEMD = f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-9f.scope\n"


# --- CRI ---------------------------------------------------------------------------------------


def test_cri_gives_the_runtime_spec_path(
    runtime: CriStandIn, resolver: NetnsResolver, proc_root: Path
) -> None:
    ns = netns_file(proc_root, "cni-1")
    runtime.run_pod(UID, "p", netns=str(ns))
    assert resolver.resolve(UID) == str(ns)
    assert runtime.calls == ["ListPodSandbox", "PodSandboxStatus"]


def test_newest_ready_sandbox_wins(
    runtime: CriStandIn, resolver: NetnsResolver, proc_root: Path
) -> None:
    runtime.run_pod(UID, "p", netns=str(netns_file(proc_root, "old")))
    newest = runtime.run_pod(UID, "p", netns=str(netns_file(proc_root, "new")))
    runtime.run_pod("another-uid", "q", netns=str(netns_file(proc_root, "q")))
    assert resolver.resolve(UID).endswith("/new")
    runtime.stop_pod(newest.id)  # a sandbox being torn down is not the pod's any more
    assert resolver.resolve(UID).endswith("/old")


def test_no_ready_sandbox_is_final(
    runtime: CriStandIn, resolver: NetnsResolver, proc_root: Path
) -> None:
    # the pod's processes are still in /proc, but the runtime said: not ready. No guessing.
    add_process(proc_root, 40, SYSTEMD, str(netns_file(proc_root, "pod")))
    sb = runtime.run_pod(UID, "p", netns=str(netns_file(proc_root, "cni")))
    runtime.stop_pod(sb.id)
    with pytest.raises(NetnsError, match=f"pod {UID} has no ready sandbox yet"):
        resolver.resolve(UID)


def test_host_network_pod_has_no_namespace_of_its_own(
    runtime: CriStandIn, resolver: NetnsResolver
) -> None:
    runtime.run_pod(UID, "p", host_network=True)
    with pytest.raises(NetnsError, match="uses the host network"):
        resolver.resolve(UID)


def test_no_path_in_spec_uses_the_sandbox_pid(
    runtime: CriStandIn, resolver: NetnsResolver, proc_root: Path
) -> None:
    add_process(proc_root, 77, "0::/somewhere\n", str(netns_file(proc_root, "pod")))
    runtime.run_pod(UID, "p", netns="", pid=77)
    assert resolver.resolve(UID) == str(proc_root / "77" / "ns" / "net")
    # a path this process cannot see (nsmgr without the host's /run) also goes to the pid
    runtime.run_pod(UID, "p", netns="/nonexistent/netns/cni-x", pid=77)
    assert resolver.resolve(UID) == str(proc_root / "77" / "ns" / "net")


def test_no_path_and_no_pid_falls_back_to_proc(
    runtime: CriStandIn, resolver: NetnsResolver, proc_root: Path
) -> None:
    add_process(proc_root, 50, CGROUPFS, str(netns_file(proc_root, "pod")))
    runtime.run_pod(UID, "p", netns="")
    assert resolver.resolve(UID) == str(proc_root / "50" / "ns" / "net")


def test_runtime_unavailable_falls_back_to_proc_and_says_so_once(
    proc_root: Path, sockdir: str, caplog: pytest.LogCaptureFixture
) -> None:
    add_process(proc_root, 50, SYSTEMD, str(netns_file(proc_root, "pod")))
    # a socket file nobody listens on: the runtime is down (ECONNREFUSED -> UNAVAILABLE)
    path = os.path.join(sockdir, "dead.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
    for endpoint in (path, "unix://" + os.path.join(sockdir, "missing.sock")):
        resolver = NetnsResolver(endpoint, str(proc_root), timeout=1.0)
        try:
            with caplog.at_level(logging.INFO, logger="nsmgr.pods.netns"):
                assert resolver.resolve(UID) == str(proc_root / "50" / "ns" / "net")
                assert resolver.resolve(UID) == str(proc_root / "50" / "ns" / "net")
        finally:
            resolver.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "nsmgr.pods.netns"]
    assert len(lines) == 2, lines  # one per resolver, not one per call
    assert "UNAVAILABLE" in lines[0]
    assert "missing.sock does not exist" in lines[1]


def test_runtime_back_is_used_again(runtime: CriStandIn, proc_root: Path, sockdir: str) -> None:
    add_process(proc_root, 50, SYSTEMD, str(netns_file(proc_root, "pod")))
    ns = netns_file(proc_root, "cni")
    runtime.run_pod(UID, "p", netns=str(ns))
    resolver = NetnsResolver(runtime.socket_path, str(proc_root), timeout=1.0)
    try:
        runtime.stop()
        assert resolver.resolve(UID).endswith("/50/ns/net")
        runtime.start()
        deadline = time.monotonic() + WAIT
        while resolver.resolve(UID) != str(ns):  # gRPC reconnects with its own backoff
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        resolver.close()


# --- /proc -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cgroup", [SYSTEMD, CGROUPFS, V2_SYSTEMD])
def test_proc_finds_the_pod_in_every_cgroup_layout(proc_root: Path, cgroup: str) -> None:
    add_process(proc_root, 300, f"0::/kubepods/besteffort/pod{UID}x/zz\n", None)  # a longer uid
    add_process(proc_root, 120, cgroup, None)  # the pod's, but in the host netns (hostNetwork)
    add_process(proc_root, 210, cgroup, str(netns_file(proc_root, "pod")))
    add_process(
        proc_root, 205, "0::/kubepods/besteffort/podother/1\n", str(netns_file(proc_root, "q"))
    )
    resolver = NetnsResolver("", str(proc_root))
    assert resolver.resolve(UID) == str(proc_root / "210" / "ns" / "net")


def test_proc_takes_the_lowest_pid(proc_root: Path) -> None:
    ns = str(netns_file(proc_root, "pod"))
    for pid in (900, 35, 1200):
        add_process(proc_root, pid, SYSTEMD, ns)
    assert NetnsResolver("", str(proc_root)).resolve(UID).endswith("/35/ns/net")


def test_proc_without_the_pod_is_an_error(proc_root: Path) -> None:
    add_process(proc_root, 120, SYSTEMD, None)
    with pytest.raises(
        NetnsError, match=r"no process of pod \S+ in \S+ has a network namespace of its own"
    ):
        NetnsResolver("", str(proc_root)).resolve(UID)
    with pytest.raises(NetnsError, match="cannot read"):
        NetnsResolver("", str(proc_root / "absent")).resolve(UID)


def test_same_netns_by_path_and_inode_url(proc_root: Path) -> None:
    ns = netns_file(proc_root, "a")
    link = add_process(proc_root, 9, SYSTEMD, str(ns))
    st = os.stat(ns)
    assert same_netns(str(ns), str(link))
    assert same_netns(f"inode://{st.st_dev}/{st.st_ino}", str(link))
    assert not same_netns(str(ns), str(netns_file(proc_root, "b")))
    assert not same_netns("/absent/x", "/absent/y")


def test_fake_proc_with_a_real_namespace(
    netns: Callable[[], str], proc_root: Path, skip_unless_root: None
) -> None:
    """Only the cgroup file is fake: ns/net links to a real namespace made by `ip netns`."""
    name = netns()
    add_process(proc_root, 1, "0::/init.scope\n", "/proc/1/ns/net")  # the real host's
    add_process(proc_root, 42, SYSTEMD, f"/run/netns/{name}")
    path = NetnsResolver("", str(proc_root)).resolve(UID)
    assert same_netns(path, f"/run/netns/{name}")


# --- a real process ----------------------------------------------------------------------------


@pytest.fixture
def skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def _writable_hierarchy(kind: str) -> Path | None:
    """A cgroup hierarchy we may make groups in: the v2 one, or v1's pids controller."""
    candidates = (
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] if kind == "v2" else ["/sys/fs/cgroup/pids"]
    )
    for c in candidates:
        p = Path(c)
        if not (p / "cgroup.procs").exists():
            continue
        probe = p / f"nsp-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            continue
        return p
    return None


@contextlib.contextmanager
def _cgroup(leaf: Path, top: Path) -> Iterator[Path]:
    leaf.mkdir(parents=True)
    try:
        yield leaf
    finally:
        d = leaf
        while True:
            deadline = time.monotonic() + WAIT
            while True:  # an emptied cgroup may be busy for a moment
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            if d == top:
                break
            d = d.parent


@needs_root
@pytest.mark.netns
@pytest.mark.parametrize("kind", ["v2", "v1"])
def test_real_process_in_a_pod_cgroup_and_namespace(netns: Callable[[], str], kind: str) -> None:
    hierarchy = _writable_hierarchy(kind)
    if hierarchy is None:
        pytest.skip(f"no writable cgroup {kind} hierarchy here")
    uid = str(uuid.uuid4())
    under = uid.replace("-", "_")
    top = hierarchy / f"nsp-{uid[:8]}"
    if kind == "v2":  # systemd driver layout
        leaf = (
            top
            / "kubepods.slice/kubepods-besteffort.slice"
            / f"kubepods-besteffort-pod{under}.slice/cri-containerd-1.scope"
        )
    else:  # cgroupfs driver layout
        leaf = top / "kubepods/besteffort" / f"pod{uid}" / "0a1b2c"
    name = netns()
    with _cgroup(leaf, top):
        proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
        try:
            (leaf / "cgroup.procs").write_text(str(proc.pid))
            # ip joins the namespace, then execs sleep under the same pid
            deadline = time.monotonic() + WAIT
            while not same_netns(f"/proc/{proc.pid}/ns/net", f"/run/netns/{name}"):
                assert time.monotonic() < deadline, "sleep never entered the namespace"
                time.sleep(0.01)
            resolver = NetnsResolver("", "/proc")
            assert resolver.resolve(uid) == f"/proc/{proc.pid}/ns/net"
        finally:
            proc.kill()
            proc.wait()


def test_sandbox_state_constants_match_cri() -> None:
    # the resolver filters on SANDBOX_READY = 0; a regenerated proto must keep it
    assert cri.SANDBOX_READY == 0 and cri.SANDBOX_NOTREADY == 1
