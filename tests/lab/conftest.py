"""Lab fixtures: a unique prefix per test whose lab is always torn down, and leak checks."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from lab import build
from lab.topology import names_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

needs_lab = pytest.mark.skipif(
    os.geteuid() != 0
    or not all(os.path.exists(p) for p in (build.SSHD, build.CAPSH))
    or any(shutil.which(t) is None for t in ("ip", "setcap", "useradd", "ssh", "ssh-keygen")),
    reason="needs root, iproute2, openssh-server/client, libcap2-bin and useradd",
)


def nsm_lab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`nsm-lab ARGS` as a subprocess (the console script's module)."""
    res = subprocess.run(
        [sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True, cwd=REPO
    )
    if check and res.returncode != 0:
        raise AssertionError(f"nsm-lab {' '.join(args)}: rc={res.returncode}\n{res.stderr}")
    return res


def leftovers(prefix: str) -> list[str]:
    """Anything of lab `prefix` still on the machine."""
    n = names_for(prefix)
    out = [f"netns {ns}" for ns in (n.node_ns, n.tor_ns) if build.netns_exists(ns)]
    if n.mgmt_host_if in build.link_names():
        out.append(f"link {n.mgmt_host_if}")
    try:
        pwd.getpwnam(n.tor_user)
        out.append(f"user {n.tor_user}")
    except KeyError:
        pass
    if os.path.exists(n.state_dir):
        out.append(f"dir {n.state_dir}")
    return out


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh lab prefix; whatever the test left of that lab is removed afterwards."""
    p = f"t{uuid.uuid4().hex[:7]}"
    try:
        yield p
    finally:
        build.destroy(p)
        assert leftovers(p) == []


@pytest.fixture
def prefix2() -> Iterator[str]:
    p = f"u{uuid.uuid4().hex[:7]}"
    try:
        yield p
    finally:
        build.destroy(p)
