"""The first-generation Liaobots module against its replica server."""

from __future__ import annotations

import pytest

from patchbay.errors import AuthError, StreamInterrupted, UpstreamError
from patchbay.providers import liaobots_legacy
from patchbay.timeouts import Timeout
from tests.replicas.liaobots_legacy import LiaobotsLegacyReplica
from tests.replicas.threaded import threaded

RUSSIAN = [{"role": "user", "content": "Привет, как дела?"}]
FAST = Timeout(connect=2, first_byte=0.5, idle=0.5, total=10)


def test_module_attributes_of_the_protocol() -> None:
    assert liaobots_legacy.url == "https://liaobots.com"
    assert liaobots_legacy.model == ["gpt-3.5-turbo", "gpt-4"]
    assert liaobots_legacy.supports_stream is True and liaobots_legacy.needs_auth is True
    assert liaobots_legacy.models["gpt-4"] == {"id": "gpt-4", "name": "GPT-4", "maxLength": 24000, "tokenLimit": 8000}
    assert liaobots_legacy.params == (
        "patchbay.providers.Liaobots supports: (model: str, messages: list, stream: bool)"
    )


def test_old_documentation_example_runs_as_written() -> None:
    with threaded(LiaobotsLegacyReplica()) as replica:
        tokens = []
        for token in liaobots_legacy._create_completion(model="gpt-3.5-turbo", messages=RUSSIAN, stream=True,
                                                        auth=replica.auth_code, base_url=replica.base_url):
            tokens.append(token)
        assert "".join(tokens) == replica.answer
        assert replica.violations == []


async def test_same_call_with_async_for(liaobots_legacy_replica: LiaobotsLegacyReplica) -> None:
    tokens = [token async for token in liaobots_legacy._create_completion(
        model="gpt-3.5-turbo", messages=RUSSIAN, stream=True, auth=liaobots_legacy_replica.auth_code,
        base_url=liaobots_legacy_replica.base_url)]
    assert "".join(tokens) == liaobots_legacy_replica.answer


async def test_stream_false_gives_the_whole_text_at_once(liaobots_legacy_replica: LiaobotsLegacyReplica) -> None:
    tokens = [token async for token in liaobots_legacy._create_completion(
        model="gpt-4", messages=RUSSIAN, stream=False, auth=liaobots_legacy_replica.auth_code,
        base_url=liaobots_legacy_replica.base_url)]
    assert tokens == [liaobots_legacy_replica.answer]
    assert liaobots_legacy_replica.requests_to("/api/chat")[0].json["model"]["id"] == "gpt-4"


def test_missing_auth_is_a_clear_error() -> None:
    with pytest.raises(AuthError, match="auth code is required"):
        liaobots_legacy._create_completion(model="gpt-4", messages=RUSSIAN, stream=True)


@pytest.mark.parametrize("scenario", ["one_byte", "split_multibyte"])
async def test_utf8_survives_any_chunking(liaobots_legacy_replica: LiaobotsLegacyReplica, scenario: str) -> None:
    liaobots_legacy_replica.scenario = scenario
    tokens = [t async for t in liaobots_legacy._create_completion(
        "gpt-4", RUSSIAN, True, auth=liaobots_legacy_replica.auth_code, base_url=liaobots_legacy_replica.base_url)]
    assert "".join(tokens) == liaobots_legacy_replica.answer
    assert "\ufffd" not in "".join(tokens)


@pytest.mark.parametrize("scenario", ["normal", "bad_auth", "bad_auth_401"])
async def test_bad_auth_code_is_an_error_never_text(liaobots_legacy_replica: LiaobotsLegacyReplica,
                                                    scenario: str) -> None:
    if scenario != "normal":
        liaobots_legacy_replica.scenario = scenario
    tokens: list[str] = []
    with pytest.raises(AuthError):
        async for token in liaobots_legacy._create_completion(
                "gpt-4", RUSSIAN, True, auth="wrong-code", base_url=liaobots_legacy_replica.base_url):
            tokens.append(token)
    assert tokens == []


async def test_answer_that_starts_like_the_error_body_is_still_an_answer(
        liaobots_legacy_replica: LiaobotsLegacyReplica) -> None:
    liaobots_legacy_replica.answer = "Errors are part of life."
    liaobots_legacy_replica.scenario = "one_byte"
    tokens = [t async for t in liaobots_legacy._create_completion(
        "gpt-4", RUSSIAN, True, auth=liaobots_legacy_replica.auth_code, base_url=liaobots_legacy_replica.base_url)]
    assert "".join(tokens) == "Errors are part of life."


async def test_server_error(liaobots_legacy_replica: LiaobotsLegacyReplica) -> None:
    liaobots_legacy_replica.scenario = "chat_500"
    with pytest.raises(UpstreamError):
        await liaobots_legacy.LiaobotsLegacy.create_async(
            "gpt-4", RUSSIAN, auth=liaobots_legacy_replica.auth_code, base_url=liaobots_legacy_replica.base_url)


async def test_stall_after_text_is_interrupted(liaobots_legacy_replica: LiaobotsLegacyReplica) -> None:
    liaobots_legacy_replica.scenario = "stall"
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for t in liaobots_legacy.LiaobotsLegacy.create_async_generator(
                "gpt-4", RUSSIAN, auth=liaobots_legacy_replica.auth_code, base_url=liaobots_legacy_replica.base_url,
                timeout=FAST):
            received.append(t)
    assert info.value.partial_text == "".join(received) != ""
