"""OpenAICompatible end to end against the fault-injecting OpenAI fake (protocols.md §4)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web

from patchbay.errors import (
    AuthError,
    ConnectionFailed,
    FirstByteTimeout,
    IdleTimeout,
    InvalidRequest,
    ModelNotSupported,
    PatchbayError,
    PaymentRequired,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
)
from patchbay.events import EventStream, Finish, ProviderInfo, TextDelta, ToolCallDelta, Usage
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.providers.presets import PRESETS, Preset, get_preset
from patchbay.timeouts import Timeout
from tests.replicas.base import DEFAULT_ANSWER
from tests.replicas.openai_fake import OpenAIFake, error_object

HELLO = [{"role": "user", "content": "Hello, how are you?"}]
FAST = Timeout(connect=2, first_byte=0.5, idle=0.5, total=10)
KEY = "sk-test-0123456789abcdef"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def provider_for(fake: OpenAIFake, **options: Any) -> type[OpenAICompatible]:
    options.setdefault("default_model", "fake-small")
    return OpenAICompatible.configure("Fake", base_url=fake.api_base, **options)


async def run(provider: type[OpenAICompatible], messages: list[dict[str, Any]] = HELLO, **kwargs: Any) -> EventStream:
    """Consume a whole stream and return it (its text, usage, finish reason and tool calls)."""
    kwargs.setdefault("timeout", FAST)
    stream = provider.stream(kwargs.pop("model", None), messages, **kwargs)
    await stream.collect()
    return stream


# -- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["normal", "one_byte", "keepalive"])
async def test_streaming_text_usage_and_finish(openai_fake: OpenAIFake, scenario: str) -> None:
    openai_fake.scenario = scenario
    events = [event async for event in provider_for(openai_fake).stream(None, HELLO, timeout=FAST)]
    assert events[0] == ProviderInfo("Fake", "fake-small")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == DEFAULT_ANSWER
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1  # really streamed
    usage = openai_fake.usage(openai_fake.last_body, DEFAULT_ANSWER)
    assert events[-2:] == [Usage(usage["prompt_tokens"], usage["completion_tokens"], cost=0.0), Finish("stop")]
    body = openai_fake.last_body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "fake-small" and body["messages"] == HELLO
    assert openai_fake.violations == []


async def test_non_streaming_text(openai_fake: OpenAIFake) -> None:
    stream = await run(provider_for(openai_fake), stream=False)
    assert stream.text == DEFAULT_ANSWER
    assert stream.usage is not None and stream.usage.completion_tokens > 0
    assert stream.finish_reason == "stop"
    assert openai_fake.last_body["stream"] is False and "stream_options" not in openai_fake.last_body
    assert openai_fake.violations == []


async def test_echo_and_explicit_model(openai_fake: OpenAIFake) -> None:
    text = await provider_for(openai_fake).create_async(
        "any-model-the-server-knows", [{"role": "user", "content": "echo:Ünïcødé 🌍"}], timeout=FAST
    )
    assert text == "Ünïcødé 🌍"
    assert openai_fake.last_body["model"] == "any-model-the-server-knows"


async def test_create_completion_sync(openai_fake: OpenAIFake) -> None:
    # The fake serves on this test's loop, so the blocking caller runs in a worker thread.
    provider = provider_for(openai_fake)

    def blocking() -> list[str]:
        with provider.create_completion(None, [{"role": "user", "content": "echo:sync works"}], timeout=FAST) as it:
            return list(it)

    parts = await asyncio.to_thread(blocking)
    assert "".join(parts) == "sync works"


# -- pass-through ----------------------------------------------------------------------------------


async def test_parameters_and_extra_body_pass_through(openai_fake: OpenAIFake) -> None:
    provider = provider_for(openai_fake, extra_body={"user": "class-level"}, headers={"X-Title": "patchbay"})
    await run(
        provider,
        temperature=0.3,
        top_p=0.9,
        max_tokens=64,
        stop=["\n\n"],
        seed=7,
        tools=TOOLS,
        tool_choice="auto",
        response_format={"type": "json_object"},
        extra_body={"logit_bias": {"50256": -100}, "repetition_penalty": 1.1},
        unknown_option="passed on",
    )
    body = openai_fake.last_body
    expected = {
        "temperature": 0.3, "top_p": 0.9, "max_tokens": 64, "stop": ["\n\n"], "seed": 7, "tools": TOOLS,
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "user": "class-level",
        "logit_bias": {"50256": -100}, "repetition_penalty": 1.1, "unknown_option": "passed on",
    }
    assert {key: body[key] for key in expected} == expected  # a field patchbay does not name goes on as is
    assert openai_fake.requests_to("/v1/chat/completions")[-1].headers["x-title"] == "patchbay"
    assert openai_fake.violations == []


async def test_unset_parameters_are_not_sent(openai_fake: OpenAIFake) -> None:
    await run(provider_for(openai_fake))
    assert set(openai_fake.last_body) == {"model", "messages", "stream", "stream_options"}


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_call_deltas(openai_fake: OpenAIFake, stream: bool) -> None:
    openai_fake.scenario = "tool_call"
    result = await run(provider_for(openai_fake), tools=TOOLS, stream=stream)
    calls = result.tool_calls
    assert calls and all(isinstance(c, ToolCallDelta) and c.index == 0 for c in calls)
    assert [c.name for c in calls if c.name] == ["get_weather"]
    assert calls[0].id and calls[0].id.startswith("call_")
    assert json.loads("".join(c.arguments for c in calls)) == openai_fake.tool_arguments
    assert result.finish_reason == "tool_calls" and result.text == ""


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, InvalidRequest),
        (401, AuthError),
        (402, PaymentRequired),
        (403, PermissionDenied),
        (404, ModelNotSupported),
        (409, UpstreamError),
        (422, InvalidRequest),
        (429, RateLimited),
        (500, UpstreamError),
        (502, UpstreamError),
        (503, UpstreamError),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_status_errors_map(openai_fake: OpenAIFake, status: int, error_class: type, stream: bool) -> None:
    openai_fake.scenario = f"status_{status}"
    openai_fake.retry_after = 7
    with pytest.raises(error_class) as caught:
        await run(provider_for(openai_fake), stream=stream)
    error = caught.value
    assert type(error) is error_class
    assert error.upstream_status == status and error.provider == "Fake" and error.model == "fake-small"
    assert error_object(status)["error"]["message"] in str(error)
    if status == 429:
        assert error.retry_after == 7


async def test_plain_text_and_html_error_bodies(openai_fake: OpenAIFake) -> None:
    openai_fake.error_response = lambda status: web.Response(status=status, text="upstream exploded")  # type: ignore[method-assign]
    openai_fake.fail_next, openai_fake.fail_status = 1, 503
    with pytest.raises(UpstreamError, match="503: upstream exploded"):
        await run(provider_for(openai_fake))
    openai_fake.error_response = lambda status: web.Response(  # type: ignore[method-assign]
        status=status, text="<html><head><title>Bad Gateway</title></head><body>x</body></html>",
        content_type="text/html")
    openai_fake.fail_next, openai_fake.fail_status = 1, 502
    with pytest.raises(UpstreamError) as caught:
        await run(provider_for(openai_fake))
    assert "Bad Gateway" in str(caught.value) and "<html" not in str(caught.value)


async def test_mid_stream_error_after_text_is_stream_interrupted(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "mid_stream_error"
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as caught:
        async for text in provider_for(openai_fake).create_async_generator(None, HELLO, timeout=FAST):
            received.append(text)
    assert received and caught.value.partial_text == "".join(received)
    assert isinstance(caught.value.__cause__, UpstreamError)
    assert "while streaming" in str(caught.value.__cause__)


@pytest.mark.parametrize(
    ("error", "cause_class"),
    [
        ({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}, RateLimited),
        ({"message": "who are you", "type": "x", "code": 401}, AuthError),
        ({"message": "no such model", "type": "invalid_request_error", "code": "model_not_found"}, ModelNotSupported),
        ({"message": "busy", "type": "overloaded_error"}, UpstreamError),
        ({"message": "what happened"}, UpstreamError),
        ("a bare string", UpstreamError),
    ],
)
async def test_mid_stream_error_objects_map(openai_fake: OpenAIFake, monkeypatch: pytest.MonkeyPatch,
                                            error: object, cause_class: type) -> None:
    # The fake builds its in-stream error with error_object(); swap in other error objects.
    monkeypatch.setattr("tests.replicas.openai_fake.error_object", lambda status, message=None: {"error": error})
    openai_fake.scenario = "mid_stream_error"
    with pytest.raises(StreamInterrupted) as caught:
        await run(provider_for(openai_fake))
    assert type(caught.value.__cause__) is cause_class


async def test_malformed_stream(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "malformed_stream"
    with pytest.raises((ProtocolError, StreamInterrupted)) as caught:
        await run(provider_for(openai_fake))
    error = caught.value
    cause = error.__cause__ if isinstance(error, StreamInterrupted) else error
    assert isinstance(cause, ProtocolError)


@pytest.mark.parametrize("stream", [True, False])
async def test_html_200_is_protocol_error_without_text(openai_fake: OpenAIFake, stream: bool) -> None:
    openai_fake.scenario = "html_200"
    received: list[str] = []
    with pytest.raises(ProtocolError):
        async for text in provider_for(openai_fake).create_async_generator(None, HELLO, timeout=FAST, stream=stream):
            received.append(text)
    assert received == []


async def test_slow_first_byte(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "slow_first_byte"
    # The fake holds its headers back for 2 s; headers are allowed connect + first_byte seconds.
    with pytest.raises(FirstByteTimeout):
        await run(provider_for(openai_fake), timeout=Timeout(connect=0.5, first_byte=0.5, idle=0.5, total=10))


async def test_stall_mid_stream(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "stall"
    with pytest.raises((IdleTimeout, StreamInterrupted)) as caught:
        await run(provider_for(openai_fake))
    error = caught.value
    assert isinstance(error.__cause__ if isinstance(error, StreamInterrupted) else error, IdleTimeout)
    await openai_fake.wait_until(lambda: openai_fake.open_streams == 0)


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_mid_answer(openai_fake: OpenAIFake, stream: bool) -> None:
    openai_fake.scenario = "disconnect"
    with pytest.raises(PatchbayError) as caught:
        await run(provider_for(openai_fake), stream=stream)
    error = caught.value
    if stream:  # text was delivered before the connection dropped
        assert isinstance(error, StreamInterrupted) and isinstance(error.__cause__, ConnectionFailed)
        assert error.partial_text and DEFAULT_ANSWER.startswith(error.partial_text)
    else:
        assert isinstance(error, ConnectionFailed)


# -- keys ------------------------------------------------------------------------------------------


async def test_api_key_sent_as_bearer(openai_fake: OpenAIFake) -> None:
    openai_fake.api_key = KEY
    stream = await run(provider_for(openai_fake, api_key=KEY))
    assert stream.text == DEFAULT_ANSWER
    assert openai_fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_api_key_from_environment_at_request_time(openai_fake: OpenAIFake,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    provider = provider_for(openai_fake, api_key_env="PATCHBAY_TEST_FAKE_KEY")
    monkeypatch.setenv("PATCHBAY_TEST_FAKE_KEY", KEY + "-env")
    openai_fake.api_key = KEY + "-env"
    assert (await run(provider)).text == DEFAULT_ANSWER


async def test_no_authorization_without_key(openai_fake: OpenAIFake) -> None:
    await run(provider_for(openai_fake))
    assert "authorization" not in openai_fake.requests[-1].headers


async def test_needs_auth_without_key_fails_before_sending(openai_fake: OpenAIFake) -> None:
    provider = OpenAICompatible.from_preset("openai", base_url=openai_fake.api_base, default_model="m",
                                            api_key_env="PATCHBAY_TEST_UNSET_VARIABLE")
    with pytest.raises(AuthError, match="PATCHBAY_TEST_UNSET_VARIABLE"):
        await run(provider)
    assert openai_fake.requests == []


async def test_key_never_in_error_text_even_when_echoed(openai_fake: OpenAIFake) -> None:
    secret = "sk-echoed-secret-9f8e7d6c5b4a"
    openai_fake.api_key = "a-different-valid-key"

    def echoing(status: int) -> web.Response:
        return web.json_response(error_object(status, f"Incorrect API key provided: {secret}."), status=status)

    openai_fake.error_response = echoing  # type: ignore[method-assign]
    with pytest.raises(AuthError) as caught:
        await run(provider_for(openai_fake, api_key=secret))
    error = caught.value
    assert secret not in str(error) and secret not in repr(error.args) and secret not in error.message
    assert "[REDACTED]" in str(error)
    assert secret not in json.dumps(error.to_dict())


async def test_per_request_api_key_is_redacted(openai_fake: OpenAIFake) -> None:
    secret = "sk-per-request-1a2b3c4d5e6f"
    openai_fake.api_key = "other"
    openai_fake.error_response = lambda status: web.json_response(  # type: ignore[method-assign]
        error_object(status, f"bad key {secret}"), status=status)
    with pytest.raises(AuthError) as caught:
        await run(provider_for(openai_fake), api_key=secret)
    assert secret not in str(caught.value)
    assert openai_fake.requests[-1].headers["authorization"] == f"Bearer {secret}"


async def test_rejected_key_is_banned_and_next_key_used(openai_fake: OpenAIFake,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="patchbay")
    openai_fake.api_key = "sk-good-key-2222"
    provider = provider_for(openai_fake, api_keys=["sk-bad-key-1111", "sk-good-key-2222"])
    assert (await run(provider)).text == DEFAULT_ANSWER
    sent = [r.headers["authorization"] for r in openai_fake.requests_to("/v1/chat/completions")]
    assert sent == ["Bearer sk-bad-key-1111", "Bearer sk-good-key-2222"]
    assert provider.credentials.current() == "sk-good-key-2222"
    assert "(banned)" in repr(provider.credentials) and "sk-bad" not in repr(provider.credentials)
    await run(provider)  # the banned key is not tried again
    assert openai_fake.requests[-1].headers["authorization"] == "Bearer sk-good-key-2222"
    assert "was rejected" in caplog.text and "sk-bad-key-1111" not in caplog.text


async def test_all_keys_rejected_is_bounded(openai_fake: OpenAIFake) -> None:
    openai_fake.api_key = "sk-nobody-has-this"
    provider = provider_for(openai_fake, api_keys=["sk-bad-a-1111", "sk-bad-b-2222", "sk-bad-c-3333"])
    with pytest.raises(AuthError, match="all 3 API keys were rejected"):
        await run(provider)
    assert openai_fake.chat_count == 3


async def test_single_key_rejected_is_not_banned(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_403"
    provider = provider_for(openai_fake, api_key=KEY)
    with pytest.raises(PermissionDenied):
        await run(provider)
    assert openai_fake.chat_count == 1 and provider.credentials.current() == KEY


async def test_no_key_retry_after_text(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "mid_stream_error"
    provider = provider_for(openai_fake, api_keys=["sk-one-1111", "sk-two-2222"])
    with pytest.raises(StreamInterrupted):
        await run(provider)
    assert openai_fake.chat_count == 1 and provider.credentials.current() == "sk-one-1111"


# -- models ----------------------------------------------------------------------------------------


async def test_fetch_models_and_cache(openai_fake: OpenAIFake) -> None:
    openai_fake.api_key = KEY
    provider = OpenAICompatible.configure("Fake", base_url=openai_fake.api_base, api_key=KEY)
    assert await provider.fetch_models() == ["fake-small", "fake-large"]
    assert openai_fake.requests_to("/v1/models")[0].headers["authorization"] == f"Bearer {KEY}"
    openai_fake.models = ["changed"]
    assert await provider.fetch_models() == ["fake-small", "fake-large"]  # cached
    assert provider.get_models() == ["fake-small", "fake-large"]  # sync, from the cache
    assert len(openai_fake.requests_to("/v1/models")) == 1
    assert await provider.fetch_models(refresh=True) == ["changed"]


async def test_get_models_sync_fetches_over_the_bridge(openai_fake: OpenAIFake) -> None:
    provider = OpenAICompatible.configure("Fake", base_url=openai_fake.api_base)
    assert await asyncio.to_thread(provider.get_models) == ["fake-small", "fake-large"]
    assert await asyncio.to_thread(provider.get_models) == ["fake-small", "fake-large"]
    assert len(openai_fake.requests_to("/v1/models")) == 1


async def test_get_models_configured_list_and_fallback(openai_fake: OpenAIFake) -> None:
    configured = OpenAICompatible.configure("Fake", base_url=openai_fake.api_base, models=["a", "b"])
    assert configured.get_models() == ["a", "b"]
    openai_fake.api_key = KEY  # our request has no key: 401
    fallback = OpenAICompatible.configure("Fake", base_url=openai_fake.api_base, default_model="d")
    assert await asyncio.to_thread(fallback.get_models) == ["d"]
    failing = OpenAICompatible.configure("Fake", base_url=openai_fake.api_base)
    with pytest.raises(AuthError):
        await asyncio.to_thread(failing.get_models)
    assert openai_fake.requests_to("/v1/chat/completions") == []


def test_resolve_model() -> None:
    provider = OpenAICompatible.configure("X", base_url="http://127.0.0.1:9/v1", default_model="d")
    assert provider.resolve_model(None) == "d" and provider.resolve_model("") == "d"
    assert provider.resolve_model("anything/at-all") == "anything/at-all"
    with pytest.raises(InvalidRequest, match="no default_model"):
        OpenAICompatible.configure("Y", base_url="http://127.0.0.1:9/v1").resolve_model(None)


async def test_unknown_model_surfaces_upstream_404(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_404"
    with pytest.raises(ModelNotSupported):
        await run(provider_for(openai_fake), model="no-such-model")


# -- configuration and presets ---------------------------------------------------------------------


def test_configure_makes_independent_subclasses() -> None:
    a = OpenAICompatible.configure("A", base_url="http://a.invalid/v1/", api_key="sk-aaaa-1111")
    b = OpenAICompatible.configure("B", base_url="http://b.invalid/v1", models=["m"])
    assert issubclass(a, OpenAICompatible) and a.name == "A" and a.base_url == "http://a.invalid/v1"
    assert a.credentials is not b.credentials and len(b.credentials) == 0
    assert OpenAICompatible.base_url == "" and OpenAICompatible.models == []
    assert a.working and a.supports_stream and a.supports_system_message and a.supports_message_history
    assert "temperature" in a.params and "extra_body" in a.params


def test_presets() -> None:
    assert set(PRESETS) == {"openai", "openrouter", "groq", "together", "deepseek", "ollama", "vllm", "llamacpp",
                            "lmstudio"}
    assert get_preset("groq") == Preset("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", True, False)
    assert get_preset("ollama").key_env is None and get_preset("ollama").local
    vllm = get_preset("vllm")
    assert vllm.key_env == "VLLM_API_KEY" and not vllm.needs_auth
    with pytest.raises(InvalidRequest, match="lmstudio"):
        get_preset("nope")
    provider = OpenAICompatible.from_preset("openrouter")
    assert provider.name == "openrouter" and provider.base_url == "https://openrouter.ai/api/v1"
    assert provider.api_key_env == "OPENROUTER_API_KEY" and provider.needs_auth
    local = OpenAICompatible.from_preset("lmstudio", name="studio", default_model="qwen")
    assert local.name == "studio" and local.local and not local.needs_auth and local.default_model == "qwen"
