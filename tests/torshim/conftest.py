"""Fixtures of the torshim tests that talk to a real netconfd: one server per test module (its
stop takes 1-4 s, so sharing it per module keeps the suite fast) and an admin session of the
test's own to reset and inspect the switch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.torshim.netconf_server import NetconfServer, running_server
from torshim.netconf import NetconfSession


@pytest.fixture(scope="module")
def server() -> Iterator[NetconfServer]:
    with running_server("candidate") as s:
        yield s


@pytest.fixture(scope="module")
def admin(server: NetconfServer) -> Iterator[NetconfSession]:
    """A session of the test's own, to reset and to look at the switch."""
    s = NetconfSession(server.params())
    yield s
    s.close()
