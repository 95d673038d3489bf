"""Pytest fixtures: one started replica per test, stopped afterwards.

Enable them for the whole suite with ``pytest_plugins = ["tests.replicas.fixtures"]`` in the
root conftest, or import the fixture names into a test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.replicas.aichatonline import AiChatOnlineReplica
from tests.replicas.liaobots import LiaobotsReplica
from tests.replicas.liaobots_legacy import LiaobotsLegacyReplica
from tests.replicas.openai_fake import OpenAIFake


@pytest_asyncio.fixture
async def liaobots_replica() -> AsyncIterator[LiaobotsReplica]:
    """A running current-generation Liaobots replica (``.base_url``)."""
    async with LiaobotsReplica() as replica:
        yield replica


@pytest_asyncio.fixture
async def liaobots_legacy_replica() -> AsyncIterator[LiaobotsLegacyReplica]:
    """A running first-generation Liaobots replica (``.base_url``, ``.auth_code``)."""
    async with LiaobotsLegacyReplica() as replica:
        yield replica


@pytest_asyncio.fixture
async def aichatonline_replica() -> AsyncIterator[AiChatOnlineReplica]:
    """A running AiChatOnline replica (``.base_url``)."""
    async with AiChatOnlineReplica() as replica:
        yield replica


@pytest_asyncio.fixture
async def openai_fake() -> AsyncIterator[OpenAIFake]:
    """A running OpenAI-compatible fake (``.base_url``, ``.api_base`` = base_url + "/v1")."""
    async with OpenAIFake() as replica:
        yield replica
