"""Fixtures of the nsmgr tests (tests/nsmgr/pods has its own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from nsmgr.agent import Agent
from nsmgr.config import parse_config
from tests.nsmgr.node import FakeNode, build_node


@pytest.fixture
def node(netns: Callable[[], str]) -> Iterator[FakeNode]:
    n = build_node(netns)
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def make_agent(node: FakeNode) -> Iterator[Callable[..., Agent]]:
    """Started agents on the node (config overrides as keywords); all stopped at teardown."""
    made: list[Agent] = []

    def make(**over: object) -> Agent:
        agent = Agent(parse_config(node.config(**over)))
        agent.start()
        made.append(agent)
        return agent

    try:
        yield make
    finally:
        for agent in made:
            if agent.ready:
                agent.stop()
