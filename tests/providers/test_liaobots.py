"""Liaobots (current generation) end to end against the replica server."""

from __future__ import annotations

import pytest

from patchbay.errors import (
    AuthError,
    ConnectionFailed,
    FirstByteTimeout,
    IdleTimeout,
    PaymentRequired,
    SessionRejected,
    StreamInterrupted,
    UpstreamError,
)
from patchbay.providers import Liaobots
from patchbay.timeouts import Timeout
from tests.replicas.base import corrupt_utf8
from tests.replicas.liaobots import LiaobotsReplica
from tests.replicas.threaded import threaded

HELLO = [{"role": "user", "content": "Hello, how are you?"}]
FAST = Timeout(connect=2, first_byte=0.5, idle=0.5, total=10)


pytestmark = pytest.mark.usefixtures("clean_liaobots")


async def collect(replica: LiaobotsReplica, messages: list[dict[str, str]] = HELLO, **kwargs: object) -> list[str]:
    kwargs.setdefault("timeout", FAST)
    return [t async for t in Liaobots.create_async_generator("gpt-4o", messages, base_url=replica.base_url,
                                                              **kwargs)]


async def test_old_documentation_example_runs(liaobots_replica: LiaobotsReplica) -> None:
    generator = await Liaobots.create_async_generator(
        model="gpt-4o-2024-08-06", messages=HELLO, base_url=liaobots_replica.base_url
    )
    text = "".join([message async for message in generator])
    assert text == liaobots_replica.answer
    assert liaobots_replica.violations == []


async def test_request_shape_system_prompt_and_model_record(liaobots_replica: LiaobotsReplica) -> None:
    messages = [{"role": "system", "content": "Be terse."}, *HELLO]
    await collect(liaobots_replica, messages)
    chat = liaobots_replica.requests_to("/api/chat")[0].json
    assert chat["prompt"] == "Be terse."
    assert chat["messages"] == HELLO
    assert chat["model"]["id"] == "gpt-4o-2024-08-06" and chat["model"]["maxLength"] == 260000
    assert liaobots_replica.violations == []


async def test_default_system_prompt(liaobots_replica: LiaobotsReplica) -> None:
    await collect(liaobots_replica)
    assert liaobots_replica.requests_to("/api/chat")[0].json["prompt"] == "You are a helpful assistant."


async def test_auth_code_is_cached_across_requests(liaobots_replica: LiaobotsReplica) -> None:
    await collect(liaobots_replica)
    await collect(liaobots_replica)
    assert (liaobots_replica.login_count, liaobots_replica.user_count, liaobots_replica.chat_count) == (1, 1, 2)


@pytest.mark.parametrize("scenario", ["one_byte", "split_multibyte", "malformed"])
async def test_chunking_and_garbage_do_not_change_the_text(liaobots_replica: LiaobotsReplica, scenario: str) -> None:
    liaobots_replica.scenario = scenario
    assert "".join(await collect(liaobots_replica)) == liaobots_replica.answer


@pytest.mark.parametrize(
    ("scenario", "error"),
    [("user_401", AuthError), ("user_402", PaymentRequired), ("empty_authcode", AuthError),
     ("user_captcha", SessionRejected), ("captcha", SessionRejected), ("error_body", SessionRejected),
     ("chat_401", AuthError), ("chat_402", PaymentRequired)],
)
async def test_auth_failures_retry_a_bounded_number_of_times(
    liaobots_replica: LiaobotsReplica, scenario: str, error: type[Exception]
) -> None:
    liaobots_replica.scenario = scenario
    received: list[str] = []
    with pytest.raises(error) as info:
        async for text in Liaobots.create_async_generator("gpt-4o", HELLO, base_url=liaobots_replica.base_url,
                                                          timeout=FAST):
            received.append(text)
    assert received == []  # a captcha page or an `Error` body never reaches the caller as text
    assert liaobots_replica.login_count == Liaobots.max_auth_attempts
    assert info.value.provider == "Liaobots"


async def test_server_error_is_not_retried(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.scenario = "chat_500"
    with pytest.raises(UpstreamError):
        await collect(liaobots_replica)
    assert liaobots_replica.chat_count == 1


async def test_user_codes_rotate_to_the_next_one(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.rejected_codes = {"code-a"}
    liaobots_replica.valid_codes = {"code-b"}
    text = "".join(await collect(liaobots_replica, auth="code-a, code-b"))
    assert text == liaobots_replica.answer  # once: no duplicated text after the retry
    codes = [r.headers["x-auth-code"] for r in liaobots_replica.requests_to("/api/chat")]
    assert codes == ["code-a", "code-b"]
    assert Liaobots.auth_codes.current() == "code-b"
    assert liaobots_replica.login_count == 0


async def test_rejected_code_recovers_with_fresh_login(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.free_messages = 1
    first = "".join(await collect(liaobots_replica))
    second = "".join(await collect(liaobots_replica))
    assert first == second == liaobots_replica.answer
    assert liaobots_replica.login_count == 2
    assert len(liaobots_replica.issued_codes) == 2


async def test_codes_from_the_environment(liaobots_replica: LiaobotsReplica, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIAOBOTS_AUTH_CODES", "env-code")
    liaobots_replica.valid_codes = {"env-code"}
    await collect(liaobots_replica)
    assert liaobots_replica.requests_to("/api/chat")[0].headers["x-auth-code"] == "env-code"


async def test_auth_code_never_appears_in_errors(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.valid_codes = {"secret-code-123"}
    liaobots_replica.scenario = "chat_500"
    with pytest.raises(UpstreamError) as info:
        await collect(liaobots_replica, auth="secret-code-123")
    assert "secret-code-123" not in str(info.value)
    assert "secret-code-123" not in repr(Liaobots.auth_codes)


async def test_slow_first_byte_times_out(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.scenario = "slow_first_byte"
    liaobots_replica.first_byte_delay = 5
    with pytest.raises(FirstByteTimeout):
        await collect(liaobots_replica)


async def test_reset_before_headers_is_connection_failed(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.scenario = "reset_before_headers"
    with pytest.raises(ConnectionFailed):
        await collect(liaobots_replica)


async def test_invalid_utf8_arrives_as_replacement_characters(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.scenario = "invalid_utf8"
    text = "".join(await collect(liaobots_replica))
    assert text == corrupt_utf8(liaobots_replica.answer.encode()).decode("utf-8", "replace")
    assert "\ufffd" in text


@pytest.mark.parametrize("scenario", ["stall", "disconnect", "truncated_chunked"])
async def test_failure_after_text_is_interrupted_never_retried(liaobots_replica: LiaobotsReplica,
                                                               scenario: str) -> None:
    liaobots_replica.scenario = scenario
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for text in Liaobots.create_async_generator("gpt-4o", HELLO, base_url=liaobots_replica.base_url,
                                                          timeout=FAST):
            received.append(text)
    partial = "".join(received)
    assert partial and info.value.partial_text == partial
    assert liaobots_replica.answer.startswith(partial) and partial != liaobots_replica.answer
    assert liaobots_replica.chat_count == 1
    if scenario == "stall":
        assert isinstance(info.value.__cause__, IdleTimeout)


async def test_history_is_trimmed_to_max_length(liaobots_replica: LiaobotsReplica,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    record = dict(Liaobots.model_data["gpt-4o-2024-08-06"], maxLength=120)
    monkeypatch.setitem(Liaobots.model_data, "gpt-4o-2024-08-06", record)
    messages = [
        {"role": "system", "content": "S" * 10},
        {"role": "user", "content": "old question " * 5},
        {"role": "assistant", "content": "old answer " * 5},
        {"role": "user", "content": "latest?"},
    ]
    await collect(liaobots_replica, messages)
    sent = liaobots_replica.requests_to("/api/chat")[0].json["messages"]
    assert sent == [messages[2], messages[3]]


def test_sync_completion_without_a_loop() -> None:
    with threaded(LiaobotsReplica()) as replica:
        stream = Liaobots.create_completion("gpt-4o", HELLO, base_url=replica.base_url, timeout=FAST)
        assert "".join(stream) == replica.answer


async def test_sync_completion_inside_a_running_loop() -> None:
    with threaded(LiaobotsReplica()) as replica:
        stream = Liaobots.create_completion("gpt-4o", HELLO, base_url=replica.base_url, timeout=FAST)
        assert "".join(stream) == replica.answer
