"""Shared fixtures: fake hosts built from specs, and network namespaces that always go away."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from nicinventory.fakesysfs import BuiltHost, build_host, load_spec

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)


@pytest.fixture
def sample_host(tmp_path) -> BuiltHost:
    """The bundled sample host, built under tmp_path/sys."""
    return build_host(load_spec(None), str(tmp_path / "sys"))


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """A factory of uniquely named network namespaces; all of them are deleted at teardown.

    Deleting a namespace destroys every link inside it, veth peers in other namespaces included.
    """
    made: list[str] = []

    def make() -> str:
        name = f"nsmtest-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def ip(*args: str, ns: str | None = None) -> None:
    """Run `ip` (in a namespace), failing the test with ip's own message on error."""
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {res.stderr.strip()}")
