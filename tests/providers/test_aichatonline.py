"""AiChatOnline against its replica server."""

from __future__ import annotations

import aiohttp
import pytest

from patchbay.errors import FirstByteTimeout, UpstreamError
from patchbay.net.session import HTTPSession
from patchbay.providers import AiChatOnline, registry
from patchbay.providers.aichatonline import format_prompt
from patchbay.timeouts import Timeout
from tests.replicas.aichatonline import AiChatOnlineReplica

MESSAGES = [{"role": "user", "content": "Hello"}]
FAST = Timeout(connect=2, first_byte=0.5, idle=0.5, total=10)


def test_format_prompt_single_message_is_its_content() -> None:
    assert format_prompt([{"role": "user", "content": "Hi there"}]) == "Hi there"


def test_format_prompt_conversation() -> None:
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    assert format_prompt(messages) == (
        "System: Be kind.\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    )


def test_marked_not_working_and_skipped_by_default() -> None:
    assert AiChatOnline.working is False
    assert AiChatOnline not in registry.all()
    assert registry.get("aichatonline") is AiChatOnline


async def test_documentation_example(aichatonline_replica: AiChatOnlineReplica) -> None:
    chunks = [chunk async for chunk in await AiChatOnline.create_async_generator(
        "gpt-4o-mini", MESSAGES, base_url=aichatonline_replica.base_url)]
    assert "".join(chunks) == aichatonline_replica.answer
    chat = aichatonline_replica.requests_to("/aichatonline/api/chat/gpt")[0]
    assert chat.json["prompt"] == "Hello"
    assert aichatonline_replica.violations == []


@pytest.mark.parametrize("kind", ["patchbay", "aiohttp"])
async def test_grab_token_with_a_session(aichatonline_replica: AiChatOnlineReplica, kind: str) -> None:
    """The old documentation passed an aiohttp session: that call shape still works."""
    async with HTTPSession() if kind == "patchbay" else aiohttp.ClientSession() as session:
        first = await AiChatOnline.grab_token(session, None, base_url=aichatonline_replica.base_url)
        second = await AiChatOnline.grab_token(session, None, base_url=aichatonline_replica.base_url)
    assert first and second
    canvases = [r.query["canvas"] for r in aichatonline_replica.requests_to("/api/v1/user/getUniqueId")]
    assert len(set(canvases)) == 2  # the cache-busting value differs every time
    assert aichatonline_replica.violations == []


@pytest.mark.parametrize("scenario", ["one_byte", "split_multibyte", "malformed"])
async def test_ndjson_parsing_is_robust(aichatonline_replica: AiChatOnlineReplica, scenario: str) -> None:
    aichatonline_replica.scenario = scenario
    text = await AiChatOnline.create_async("", MESSAGES, base_url=aichatonline_replica.base_url)
    assert text == aichatonline_replica.answer


@pytest.mark.parametrize("scenario", ["token_500", "chat_500"])
async def test_server_errors(aichatonline_replica: AiChatOnlineReplica, scenario: str) -> None:
    aichatonline_replica.scenario = scenario
    with pytest.raises(UpstreamError) as info:
        await AiChatOnline.create_async("", MESSAGES, base_url=aichatonline_replica.base_url)
    assert info.value.provider == "AiChatOnline"


async def test_slow_first_byte(aichatonline_replica: AiChatOnlineReplica) -> None:
    aichatonline_replica.scenario = "slow_first_byte"
    aichatonline_replica.first_byte_delay = 5
    with pytest.raises(FirstByteTimeout):
        await AiChatOnline.create_async("", MESSAGES, base_url=aichatonline_replica.base_url, timeout=FAST)
