"""Lab fixtures: a unique prefix per test whose lab is always torn down, and leak checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from lab import build, demo, netconfd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_NO_LAB = (
    os.geteuid() != 0
    or not all(os.path.exists(p) for p in (build.SSHD, build.CAPSH))
    or any(shutil.which(t) is None for t in ("ip", "setcap", "useradd", "ssh", "ssh-keygen"))
)
needs_lab = pytest.mark.skipif(
    _NO_LAB, reason="needs root, iproute2, openssh-server/client, libcap2-bin and useradd"
)


def _has_yang() -> bool:
    try:
        netconfd.find_yang_dir()
    except netconfd.NetconfdError:
        return False
    return True


needs_netconf_lab = pytest.mark.skipif(
    _NO_LAB or bool(netconfd.missing_tools()) or not _has_yang(),
    reason="needs what the Linux lab needs, netconfd, setpriv and the OpenConfig YANG modules "
    f"(${netconfd.YANG_ENV} or ../shared/yang/openconfig)",
)


def nsm_lab(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`nsm-lab ARGS` as a subprocess (the console script's module); `env`: added variables."""
    res = subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if check and res.returncode != 0:
        raise AssertionError(f"nsm-lab {' '.join(args)}: rc={res.returncode}\n{res.stderr}")
    return res


def ping(ns: str, addr: str) -> bool:
    """One ping from netns `ns`; True if answered within a second."""
    res = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", "-q", addr],
                         capture_output=True)  # fmt: skip
    return res.returncode == 0


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def lab_processes(state_dir: str) -> list[int]:
    """Live processes whose command line names the state dir (the lab's own)."""
    return build._procs_naming(state_dir)


def leftovers(prefix: str) -> list[str]:
    """Anything of lab `prefix` still on the machine (the lab's own check, which `demo` uses)."""
    return build.leftovers(prefix)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh lab prefix; whatever the test left of that lab is removed afterwards."""
    p = f"t{uuid.uuid4().hex[:7]}"
    try:
        yield p
    finally:
        build.destroy(p)
        shutil.rmtree(demo.kept_logs(p), ignore_errors=True)  # a failed demo keeps its logs
        assert leftovers(p) == []


@pytest.fixture
def prefix2() -> Iterator[str]:
    p = f"u{uuid.uuid4().hex[:7]}"
    try:
        yield p
    finally:
        build.destroy(p)
