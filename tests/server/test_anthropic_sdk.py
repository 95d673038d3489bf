"""The official ``anthropic`` SDK against a real ``patchbay serve`` process: ``/v1/messages``
(whole and streamed, sync and async), tool use and a Claude Code style follow-up turn,
``count_tokens``, every error class the SDK maps, an in-band failure mid-stream, a glob route,
and the rate limits, metrics and request log that every chat endpoint shares.

The fakes and the gateway run on an event loop in a background thread, so the synchronous client
can block the test's thread while they answer. Routes of the shared gateway (API keys required;
the SDK sends its key as ``x-api-key``):

- ``small``: a normal OpenAI fake (``plain``); ``claude-*``: the same fake's ``fake-large``;
- ``tools``: a fake that calls the first tool it is given (``tool_call``);
- ``limited`` (429), ``broken`` (500), ``midstream`` (an error event after some text), ``cut``
  (the connection dropped halfway through the answer), ``stall`` (half the answer, then a long
  silence), ``flaky`` (a streamed tool call whose connection drops after its first fragment);
- ``resilient``: ``midstream``, then the plain fake as ``backup``, which continues a partial answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from patchbay.chat.anthropic import TOOL_ERROR_PREFIX
from tests.replicas.openai_fake import OpenAIFake, text_of
from tests.support.background_loop import BackgroundLoop
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]


API_KEY = "sk-anthropic-sdk-test-7d2e"
#: Seconds a client waits for one answer, and the background loop for a start or a stop.
CLIENT_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0

HELLO: Any = [{"role": "user", "content": "Hello"}]
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
#: Anthropic tool definitions (typed Any: the SDK's TypedDicts do not accept plain dicts for mypy).
TOOLS: Any = [
    {"name": "get_weather", "description": "The current weather in a city.", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "description": "The current time in a timezone.",
     "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}}},
]
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


@dataclass
class Services:
    background: BackgroundLoop
    gateway: GatewayProcess
    fakes: dict[str, OpenAIFake]

    @property
    def plain(self) -> OpenAIFake:
        return self.fakes["plain"]

    @property
    def tools(self) -> OpenAIFake:
        return self.fakes["tools"]

    def start_gateway(self, config: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> GatewayProcess:
        gateway = GatewayProcess(config, tmp_path, env=env)
        self.background.run(gateway.__aenter__())
        return gateway

    def stop_gateway(self, gateway: GatewayProcess) -> None:
        self.background.run(gateway.stop())


SCENARIOS = {"plain": "normal", "tools": "tool_call", "limited": "status_429", "broken": "status_500",
             "midstream": "mid_stream_error", "cut": "disconnect", "stall": "stall", "flaky": "tool_call_then_fail"}


def gateway_config(fakes: dict[str, OpenAIFake], **extra: Any) -> dict[str, Any]:
    """Every fake as a provider of its own; the routes of the module docstring."""
    return {
        "router": {"retries": 1, "first_byte_timeout": 10.0, "idle_timeout": 10.0, "timeout": 20.0},
        "providers": {**{name: {"base_url": fake.api_base, "models": ["fake-small", "fake-large"]}
                      for name, fake in fakes.items()},
                      # the plain fake again, as a service that continues a partial answer (prefill)
                      "backup": {"base_url": fakes["plain"].api_base, "models": ["fake-small"], "prefill": True}},
        "routes": {"small": ["plain/fake-small"], "tools": ["tools/fake-small"], "limited": ["limited/fake-small"],
                   "broken": ["broken/fake-small"], "midstream": ["midstream/fake-small"],
                   "cut": ["cut/fake-small"], "stall": ["stall/fake-small"], "flaky": ["flaky/fake-small"],
                   "resilient": ["midstream/fake-small", "backup/fake-small"], "claude-*": ["plain/fake-large"]},
        **extra,
    }


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    background = BackgroundLoop()
    fakes = {name: OpenAIFake(scenario) for name, scenario in SCENARIOS.items()}
    started: list[OpenAIFake] = []
    gateway: GatewayProcess | None = None
    try:
        for fake in fakes.values():
            background.run(fake.start())
            started.append(fake)
        gateway = GatewayProcess(gateway_config(fakes), tmp_path_factory.mktemp("gateway"),
                                 env={"PATCHBAY_API_KEYS": API_KEY})
        background.run(gateway.__aenter__())
        yield Services(background, gateway, fakes)
    finally:
        if gateway is not None:
            background.run(gateway.stop())
        for fake in started:
            background.run(fake.stop())
        background.close()


@pytest.fixture
def stack(services: Services) -> Iterator[Services]:
    for fake in services.fakes.values():
        fake.bodies.clear()
    yield services
    for fake in services.fakes.values():
        assert fake.violations == []  # the gateway only ever sent valid chat requests


@pytest.fixture
def client(stack: Services) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack.gateway.base_url, api_key=API_KEY, max_retries=0,
                             timeout=CLIENT_TIMEOUT) as sdk:
        yield sdk


def texts(message: Any) -> str:
    """The text of a Message's text blocks."""
    return "".join(block.text for block in message.content if block.type == "text")


def tool_uses(message: Any) -> list[Any]:
    """A Message's tool_use blocks."""
    return [block for block in message.content if block.type == "tool_use"]


# -- text ---------------------------------------------------------------------------------------------


def test_create_answers_the_fakes_text(client: anthropic.Anthropic, stack: Services) -> None:
    message = client.messages.create(model="small", max_tokens=64, messages=HELLO)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert texts(message) == stack.plain.answer
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert stack.plain.bodies[-1]["max_tokens"] == 64
    assert stack.plain.bodies[-1]["messages"][-1] == {"role": "user", "content": "Hello"}


async def test_async_create_answers_the_fakes_text(stack: Services) -> None:
    async with anthropic.AsyncAnthropic(base_url=stack.gateway.base_url, api_key=API_KEY, max_retries=0,
                                        timeout=CLIENT_TIMEOUT) as sdk:
        message = await sdk.messages.create(model="small", max_tokens=64, messages=HELLO)
        async with sdk.messages.stream(model="small", max_tokens=64, messages=HELLO) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert texts(message) == stack.plain.answer
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    assert "".join(pieces) == stack.plain.answer
    assert texts(final) == stack.plain.answer


def test_stream_text_matches_create(client: anthropic.Anthropic, stack: Services) -> None:
    whole = client.messages.create(model="small", max_tokens=64, messages=HELLO)
    with client.messages.stream(model="small", max_tokens=64, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1  # it did stream
    assert "".join(pieces) == stack.plain.answer
    assert [block.model_dump() for block in final.content] == [block.model_dump() for block in whole.content]
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens > 0
    assert final.usage.input_tokens == whole.usage.input_tokens > 0


def test_system_and_sampling_options_reach_the_upstream(client: anthropic.Anthropic, stack: Services) -> None:
    # this SDK version has no temperature argument: as an older client sends it
    client.messages.create(model="small", max_tokens=32, system="Be brief.", messages=HELLO,
                           stop_sequences=["END"], extra_body={"temperature": 0.5})
    body = stack.plain.bodies[-1]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["temperature"] == 0.5
    assert body["stop"] == ["END"]


def test_a_stop_sequence_ends_the_answer_and_is_named(client: anthropic.Anthropic, stack: Services) -> None:
    answer = stack.plain.answer
    stop = answer.split()[-1]  # the fake's last word
    message = client.messages.create(model="small", max_tokens=64, messages=HELLO, stop_sequences=[stop])
    assert texts(message) == answer[:answer.index(stop)]
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    with client.messages.stream(model="small", max_tokens=64, messages=HELLO, stop_sequences=[stop]) as stream:
        assert "".join(stream.text_stream) == answer[:answer.index(stop)]
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_a_glob_route_answers_claude_names(client: anthropic.Anthropic, stack: Services) -> None:
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=HELLO)
    assert texts(message) == stack.plain.answer
    assert stack.plain.bodies[-1]["model"] == "fake-large"  # the route's target model, not the name sent
    with client.messages.stream(model="claude-3-5-haiku-latest", max_tokens=64, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == stack.plain.answer
    assert stack.plain.bodies[-1]["model"] == "fake-large"


# -- tools ---------------------------------------------------------------------------------------------


def test_tool_use_whole_and_streamed(client: anthropic.Anthropic, stack: Services) -> None:
    message = client.messages.create(model="tools", max_tokens=128, tools=TOOLS, messages=ASK_WEATHER)
    assert message.stop_reason == "tool_use"
    [call] = tool_uses(message)
    assert call.name == "get_weather"
    assert call.input == stack.tools.tool_arguments
    assert call.id
    sent = stack.tools.bodies[-1]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA

    with client.messages.stream(model="tools", max_tokens=128, tools=TOOLS, messages=ASK_WEATHER) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [streamed] = tool_uses(final)
    assert streamed.name == "get_weather"
    assert streamed.input == stack.tools.tool_arguments
    kinds = {event.type for event in events}
    assert {"message_start", "content_block_start", "content_block_stop", "message_stop"} <= kinds
    partial = "".join(event.delta.partial_json for event in events
                      if event.type == "content_block_delta" and event.delta.type == "input_json_delta")
    assert json.loads(partial) == stack.tools.tool_arguments


def test_tool_choice_names_the_tool(client: anthropic.Anthropic, stack: Services) -> None:
    message = client.messages.create(model="tools", max_tokens=128, tools=TOOLS, messages=ASK_WEATHER,
                                     tool_choice={"type": "tool", "name": "get_time"})
    assert [call.name for call in tool_uses(message)] == ["get_time"]
    assert stack.tools.bodies[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


async def test_async_stream_of_a_tool_use(stack: Services) -> None:
    async with anthropic.AsyncAnthropic(base_url=stack.gateway.base_url, api_key=API_KEY, max_retries=0,
                                        timeout=CLIENT_TIMEOUT) as sdk, \
            sdk.messages.stream(model="tools", max_tokens=128, tools=TOOLS, messages=ASK_WEATHER,
                                tool_choice={"type": "any"}) as stream:
        final = await stream.get_final_message()
    [call] = tool_uses(final)
    assert call.name == "get_weather" and call.input == stack.tools.tool_arguments
    assert final.stop_reason == "tool_use"
    assert stack.tools.bodies[-1]["tool_choice"] == "required"


def test_claude_code_style_follow_up_with_the_tool_result(client: anthropic.Anthropic, stack: Services) -> None:
    tools: Any = [*TOOLS[:-1], {**TOOLS[-1], "cache_control": {"type": "ephemeral"}}]
    system: Any = [
        {"type": "text", "text": "You are Claude Code, an agent."},
        {"type": "text", "text": "Use tools when they help.", "cache_control": {"type": "ephemeral"}},
    ]
    first = client.messages.create(model="tools", max_tokens=256, system=system, tools=tools, messages=ASK_WEATHER)
    [call] = tool_uses(first)
    history: Any = [
        *ASK_WEATHER,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": [{"type": "text", "text": "18 degrees, sunny",
                                                   "cache_control": {"type": "ephemeral"}}]}]},
    ]
    with client.messages.stream(model="tools", max_tokens=256, system=system, tools=tools,
                                messages=history) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == stack.tools.answer
    assert final.stop_reason == "end_turn"
    sent = stack.tools.bodies[-1]["messages"]
    assert sent[0]["role"] == "system"
    assert "You are Claude Code" in json.dumps(sent[0]["content"]) and "Use tools" in json.dumps(sent[0]["content"])
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["id"] == call.id
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == call.input
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == call.id
    assert "18 degrees, sunny" in json.dumps(sent[-1]["content"])


def test_a_failed_tool_result_says_so(client: anthropic.Anthropic, stack: Services) -> None:
    first = client.messages.create(model="tools", max_tokens=128, tools=TOOLS, messages=ASK_WEATHER)
    [call] = tool_uses(first)
    history: Any = [*ASK_WEATHER, {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "is_error": True,
                                                  "content": "the weather service is down"}]}]
    message = client.messages.create(model="tools", max_tokens=128, tools=TOOLS, messages=history)
    assert texts(message) == stack.tools.answer
    result = stack.tools.bodies[-1]["messages"][-1]
    assert result["role"] == "tool" and result["tool_call_id"] == call.id
    content = result["content"] if isinstance(result["content"], str) else text_of(result["content"])
    assert content == TOOL_ERROR_PREFIX + "the weather service is down"  # the model learns the call failed


def test_claude_code_request_shape(client: anthropic.Anthropic, stack: Services) -> None:
    """What Claude Code sends: the beta endpoint (``?beta=true``, ``anthropic-beta``), thinking, a
    metadata user id; the answer is a plain text message and the user id goes upstream."""
    common: Any = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": HELLO,
                   "betas": ["interleaved-thinking-2025-05-14"], "thinking": {"type": "enabled", "budget_tokens": 1024},
                   "metadata": {"user_id": "user_0123_account_4567_session_89ab"}}
    message = client.beta.messages.create(**common)
    assert texts(message) == stack.plain.answer
    sent = stack.plain.bodies[-1]
    assert sent["user"] == "user_0123_account_4567_session_89ab"
    assert "thinking" not in sent and "metadata" not in sent  # not sent on to an OpenAI-compatible service
    with client.beta.messages.stream(**common) as stream:
        assert "".join(stream.text_stream) == stack.plain.answer
        assert stream.get_final_message().stop_reason == "end_turn"
    raw = httpx.post(f"{stack.gateway.base_url}/v1/messages?beta=true", timeout=CLIENT_TIMEOUT,
                     json={"model": "small", "max_tokens": 64, "messages": HELLO},
                     headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
                              "anthropic-beta": "interleaved-thinking-2025-05-14"})
    assert raw.status_code == 200 and raw.json()["content"][0]["text"] == stack.plain.answer


def test_an_assistant_prefill_is_continued(client: anthropic.Anthropic, stack: Services) -> None:
    messages: Any = [*HELLO, {"role": "assistant", "content": "Sure, here it is"}]
    message = client.messages.create(model="small", max_tokens=64, messages=messages)
    assert texts(message) == stack.plain.continuation  # only what follows the prefill, as Anthropic answers
    assert stack.plain.bodies[-1]["messages"][-1] == {"role": "assistant", "content": "Sure, here it is"}


#: A 1x1 PNG, as a client sends a screenshot inline.
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_an_image_block_reaches_the_upstream_as_a_data_url(client: anthropic.Anthropic, stack: Services) -> None:
    messages: Any = [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1}},
        {"type": "text", "text": "What is in this picture?"},
    ]}]
    message = client.messages.create(model="small", max_tokens=64, messages=messages)
    assert texts(message) == stack.plain.answer
    parts = stack.plain.bodies[-1]["messages"][-1]["content"]
    assert {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}"}} in parts or any(
        part.get("type") == "image_url" and part["image_url"]["url"] == f"data:image/png;base64,{PNG_1X1}"
        for part in parts)
    assert {"type": "text", "text": "What is in this picture?"} in parts


# -- count_tokens ---------------------------------------------------------------------------------------


def test_count_tokens_grows_with_the_prompt(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model="small", messages=HELLO)
    long = client.messages.count_tokens(model="small", messages=[{"role": "user", "content": "Hello " * 200}])
    with_tools = client.messages.count_tokens(model="small", messages=HELLO, tools=TOOLS)
    assert short.input_tokens > 0
    assert long.input_tokens > short.input_tokens
    assert with_tools.input_tokens > short.input_tokens


def test_count_tokens_needs_the_key_and_a_valid_body(stack: Services, client: anthropic.Anthropic) -> None:
    with anthropic.Anthropic(base_url=stack.gateway.base_url, api_key="wrong", max_retries=0,
                             timeout=CLIENT_TIMEOUT) as sdk, pytest.raises(anthropic.AuthenticationError) as info:
        sdk.messages.count_tokens(model="small", messages=HELLO)
    assert_envelope(info.value.body, "authentication_error")
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.post("/v1/messages/count_tokens", body={"model": "small"}, cast_to=httpx.Response)
    assert "messages" in assert_envelope(bad.value.body, "invalid_request_error")["message"]
    with pytest.raises(anthropic.NotFoundError) as missing:  # as /v1/messages answers an unknown model
        client.messages.count_tokens(model="no-such-model", messages=HELLO)
    assert_envelope(missing.value.body, "not_found_error")


# -- errors -----------------------------------------------------------------------------------------------


def assert_envelope(body: Any, kind: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type": kind, "message": ...}}``."""
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def test_wrong_key_is_authentication_error(stack: Services) -> None:
    with anthropic.Anthropic(base_url=stack.gateway.base_url, api_key="wrong", max_retries=0,
                             timeout=CLIENT_TIMEOUT) as sdk, pytest.raises(anthropic.AuthenticationError) as info:
        sdk.messages.create(model="small", max_tokens=64, messages=HELLO)
    assert info.value.status_code == 401
    assert_envelope(info.value.body, "authentication_error")
    assert stack.plain.bodies == []


def test_bearer_auth_is_accepted_too(stack: Services) -> None:
    with anthropic.Anthropic(base_url=stack.gateway.base_url, auth_token=API_KEY, max_retries=0,
                             timeout=CLIENT_TIMEOUT) as sdk:
        message = sdk.messages.create(model="small", max_tokens=64, messages=HELLO)
    assert texts(message) == stack.plain.answer


def test_missing_max_tokens_is_bad_request(client: anthropic.Anthropic, stack: Services) -> None:
    body = {"model": "small", "messages": HELLO}
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body=body, cast_to=httpx.Response)
    assert info.value.status_code == 400
    assert "max_tokens" in assert_envelope(info.value.body, "invalid_request_error")["message"]
    raw = httpx.post(f"{stack.gateway.base_url}/v1/messages", json=body, timeout=CLIENT_TIMEOUT,
                     headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"})
    assert raw.status_code == 400
    assert raw.headers["content-type"].startswith("application/json")
    assert_envelope(raw.json(), "invalid_request_error")
    assert stack.plain.bodies == []


def test_a_bad_block_is_bad_request_naming_its_place(client: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "nonsense"}]}]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="small", max_tokens=64, messages=messages)
    assert "messages[0].content[1].type" in assert_envelope(info.value.body, "invalid_request_error")["message"]


def test_a_wrong_method_gets_the_anthropic_envelope(stack: Services) -> None:
    raw = httpx.get(f"{stack.gateway.base_url}/v1/messages", headers={"x-api-key": API_KEY}, timeout=CLIENT_TIMEOUT)
    assert raw.status_code == 405 and raw.headers["allow"] == "POST"
    assert_envelope(raw.json(), "invalid_request_error")


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=64, messages=HELLO)
    assert info.value.status_code == 404
    assert_envelope(info.value.body, "not_found_error")
    with pytest.raises(anthropic.NotFoundError), \
            client.messages.stream(model="no-such-model", max_tokens=64, messages=HELLO) as stream:
        list(stream.text_stream)


def test_upstream_rate_limit_is_rate_limit_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="limited", max_tokens=64, messages=HELLO)
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert_envelope(info.value.body, "rate_limit_error")
    with pytest.raises(anthropic.RateLimitError), \
            client.messages.stream(model="limited", max_tokens=64, messages=HELLO) as stream:
        list(stream.text_stream)


def test_upstream_failure_is_502(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="broken", max_tokens=64, messages=HELLO)
    assert info.value.status_code == 502
    assert_envelope(info.value.body, "api_error")
    with pytest.raises(anthropic.InternalServerError) as streamed, \
            client.messages.stream(model="broken", max_tokens=64, messages=HELLO) as stream:
        list(stream.text_stream)
    assert streamed.value.status_code == 502  # failed before any text: a proper status, not in-band


@pytest.mark.parametrize("route", ["midstream", "cut"])
def test_mid_stream_failure_raises_after_the_partial_text(client: anthropic.Anthropic, stack: Services,
                                                          route: str) -> None:
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info, \
            client.messages.stream(model=route, max_tokens=64, messages=HELLO) as stream:
        for text in stream.text_stream:
            received.append(text)
    partial = "".join(received)
    answer = stack.fakes[route].answer
    assert partial  # some text came first, with status 200
    assert answer.startswith(partial) and partial != answer  # never repeated, never completed
    assert info.value.response.status_code == 200
    assert_envelope(info.value.body, "api_error")


def test_a_stream_broken_mid_answer_is_continued_by_the_next_target(client: anthropic.Anthropic,
                                                                    stack: Services) -> None:
    """``mid_stream = "continue"``: the backup continues from the text delivered; the client sees one
    seamless answer, nothing repeated."""
    with client.messages.stream(model="resilient", max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    prefill = stack.plain.bodies[-1]["messages"][-1]
    assert prefill["role"] == "assistant" and stack.fakes["midstream"].answer.startswith(prefill["content"])
    assert prefill["content"]  # the backup was given the text delivered...
    assert text == prefill["content"] + stack.plain.continuation  # ...and only its continuation followed
    assert texts(final) == text and final.stop_reason == "end_turn"


def test_a_tool_call_cut_mid_stream_raises_and_is_not_restarted(client: anthropic.Anthropic,
                                                                stack: Services) -> None:
    flaky = stack.fakes["flaky"]
    calls = flaky.chat_count
    events: list[Any] = []
    with pytest.raises(anthropic.APIStatusError) as info, \
            client.messages.stream(model="flaky", max_tokens=128, tools=TOOLS, messages=ASK_WEATHER) as stream:
        for event in stream:
            events.append(event)
    starts = [e for e in events if e.type == "content_block_start"]
    assert [e.content_block.type for e in starts] == ["tool_use"]
    assert starts[0].content_block.name == "get_weather"
    assert not any(e.type == "message_stop" for e in events)
    assert_envelope(info.value.body, "api_error")
    assert flaky.chat_count == calls + 1  # a call half delivered is never started again
    with pytest.raises(anthropic.InternalServerError) as whole:
        client.messages.create(model="flaky", max_tokens=128, tools=TOOLS, messages=ASK_WEATHER)
    assert whole.value.status_code == 502


def test_leaving_a_stream_cancels_the_upstream_request(client: anthropic.Anthropic, stack: Services) -> None:
    stall = stack.fakes["stall"]  # half the answer, then 30 s of silence (the gateway's idle limit is 10 s)
    left = stall.disconnects
    with client.messages.stream(model="stall", max_tokens=64, messages=HELLO) as stream:
        first = next(iter(stream.text_stream))
    assert first and stall.answer.startswith(first)
    stack.background.run(stall.wait_until(lambda: stall.disconnects == left + 1 and stall.open_streams == 0,
                                          timeout=5))


def test_a_whole_answer_cut_short_is_502(client: anthropic.Anthropic) -> None:
    """Not streamed, a failure halfway is an error status: no partial Message passes for a whole one."""
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="cut", max_tokens=64, messages=HELLO)
    assert info.value.status_code == 502
    assert_envelope(info.value.body, "api_error")


def test_timeout_is_504_and_a_large_body_413(stack: Services, tmp_path: Path) -> None:
    config = gateway_config(stack.fakes)
    config["router"] = {"retries": 1, "first_byte_timeout": 1.0, "idle_timeout": 1.0, "timeout": 10.0}
    config["server"] = {"max_body_bytes": 4096}
    slow = stack.fakes["plain"]
    gateway = stack.start_gateway(config, tmp_path, {"PATCHBAY_API_KEYS": API_KEY})
    try:
        with anthropic.Anthropic(base_url=gateway.base_url, api_key=API_KEY, max_retries=0,
                                 timeout=CLIENT_TIMEOUT) as sdk:
            with pytest.raises(anthropic.ContentTooLargeError) as large:
                sdk.messages.create(model="small", max_tokens=64, messages=[{"role": "user", "content": "x" * 8000}])
            assert large.value.status_code == 413
            assert_envelope(large.value.body, "request_too_large")
            slow.scenario = "slow_first_byte"
            slow.first_byte_delay = 5.0  # the gateway waits 1 s for a first byte
            try:
                with pytest.raises(anthropic.GatewayTimeoutError) as late:
                    sdk.messages.create(model="small", max_tokens=64, messages=HELLO)
            finally:
                slow.scenario = "normal"
            assert late.value.status_code == 504
            assert_envelope(late.value.body, "timeout_error")
    finally:
        stack.stop_gateway(gateway)


# -- limits, metrics, request log ----------------------------------------------------------------------


def metrics_text(gateway: GatewayProcess) -> str:
    response = httpx.get(f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"},
                         timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200
    return response.text


def test_rate_limits_metrics_and_request_log_see_messages(stack: Services, tmp_path: Path) -> None:
    config = gateway_config(stack.fakes, limits={"requests_per_minute": 3})
    gateway = stack.start_gateway(config, tmp_path, {"PATCHBAY_API_KEYS": API_KEY})
    try:
        with anthropic.Anthropic(base_url=gateway.base_url, api_key=API_KEY, max_retries=0,
                                 timeout=CLIENT_TIMEOUT) as sdk:
            whole = sdk.messages.create(model="small", max_tokens=64,
                                        messages=[{"role": "user", "content": "first question"}])
            with sdk.messages.stream(model="small", max_tokens=64,
                                     messages=[{"role": "user", "content": "second question"}]) as stream:
                streamed = "".join(stream.text_stream)
            with pytest.raises(anthropic.InternalServerError):
                sdk.messages.create(model="broken", max_tokens=64, messages=[{"role": "user", "content": "third"}])
            with pytest.raises(anthropic.RateLimitError) as info:
                sdk.messages.create(model="small", max_tokens=64, messages=HELLO)
        assert texts(whole) == streamed == stack.plain.answer
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert "requests_per_minute" in assert_envelope(info.value.body, "rate_limit_error")["message"]
        text = metrics_text(gateway)
        assert 'patchbay_requests_total{provider="plain",model="fake-small",status="200"} 2' in text
        assert 'patchbay_request_duration_seconds_count{provider="plain",model="fake-small"} 2' in text
        assert 'patchbay_time_to_first_token_seconds_count{provider="plain",model="fake-small"} 1' in text
        assert 'patchbay_errors_total{provider="broken",model="fake-small",code="all_providers_failed"} 1' in text
        assert any(line.startswith("patchbay_rate_limited_total{") and 'limit="requests_per_minute"' in line
                   and line.endswith(" 1") for line in text.splitlines())
    finally:
        stack.stop_gateway(gateway)  # writes what the request log still has queued
    records = read_request_log(tmp_path / "home")
    by_question = {json.dumps(r["messages"]): r for r in records}
    [first] = [r for key, r in by_question.items() if "first question" in key]
    [second] = [r for key, r in by_question.items() if "second question" in key]
    [failed] = [r for key, r in by_question.items() if "third" in key]
    for record in (first, second):
        assert record["response"] == stack.plain.answer
        assert record["status"] == 200
        assert record["requested_model"] == "small"
        assert record["provider"] == "plain"
    assert failed["status"] == 502 and failed["requested_model"] == "broken"
    assert "AllProvidersFailed" in failed["error"]
    assert len(records) == 3  # the refused fourth request never reached the router


def read_request_log(home: Path) -> list[dict[str, Any]]:
    """Every exchange in the request log under ``home``, by ``patchbay logs --json``."""
    result = subprocess.run([sys.executable, "-m", "patchbay", "logs", "--json", "-n", "0"],
                            env={"PATCHBAY_HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, timeout=CLI_TIMEOUT, check=True)
    records = json.loads(result.stdout)
    assert isinstance(records, list)
    return records
