"""Real clients beyond plain text, against ``patchbay serve``: tools, structured output, images,
``n`` and logprobs, over fallback routes.

The official openai SDK, LangChain's ``ChatOpenAI`` and the ``llm`` CLI talk to one gateway
process with these routes:

- ``local-route``: a failing OpenAI-compatible fake (500), then the embedded model (tools and
  JSON by grammar-constrained decoding; no images);
- ``web-route``: the same failing fake, then the Liaobots replica (tools and JSON by emulation:
  prompt, buffer, validate, one repair turn; it takes text only, and the replica answers 400 to
  anything else, so a raw tool-loop history or a content list would show);
- ``direct``: an OpenAI-compatible fake that calls tools (native pass-through);
- ``flaky-local`` / ``flaky-web``: a fake whose streamed tool call breaks after its first
  arguments fragment, then the embedded model or Liaobots.

Every feature is either honoured with valid output, or refused with a clear 4xx/5xx: never a 200
that silently dropped it. Web replies are scripted (``LiaobotsReplica.replies``); the embedded
model's words are never asserted, only that its output is valid (parses, validates against the
schema, names the right tool).

The replicas and the gateway run on an event loop in a background thread, so the synchronous
clients (and the ``llm`` subprocess) can block the test's thread while the replicas answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pydantic
import pytest
from langchain_openai import ChatOpenAI

from patchbay.providers.liaobots.current import MODELS
from tests.replicas.liaobots import ROLES, LiaobotsReplica
from tests.replicas.openai_fake import OpenAIFake
from tests.support.background_loop import BackgroundLoop
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]


#: Seconds a client waits for one answer (the embedded model shares 2 busy cores).
CLIENT_TIMEOUT = 120.0
#: Seconds an ``llm`` subprocess may run.
CLI_TIMEOUT = 120.0
#: Output budget for the embedded model: room for one tool call or a small JSON object.
LOCAL_TOKENS = 120

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TIME_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "minLength": 1, "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
#: Typed Any: the SDK types requests as TypedDicts, which plain dicts do not satisfy for mypy.
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                      "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "description": "The current time in a timezone.",
                                      "parameters": TIME_SCHEMA}},
]
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}


def user(text: str) -> Any:
    """A one-message conversation."""
    return [{"role": "user", "content": text}]


ASK_WEATHER = user("What is the weather in Paris? Use the tool.")
ASK_TIME = user("What time is it in Tokyo? Use the tool.")

#: A 1x1 PNG, as a client would send an image inline.
PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
IMAGE_MESSAGE: Any = {"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1X1}", "detail": "low"}},
]}


#: The arguments the fakes' tool calls carry unless a test says otherwise.
DEFAULT_ARGUMENTS = {"city": "Paris", "unit": "celsius"}


class Weather(pydantic.BaseModel):
    """Structured output the clients ask for (small bounds keep the embedded model's answer short)."""

    city: str = pydantic.Field(min_length=1, max_length=40)
    temperature: int = pydantic.Field(ge=-60, le=60)


WEATHER_REPLY = json.dumps({"city": "Paris", "temperature": 18})


def call_reply(name: str, arguments: dict[str, Any]) -> str:
    """A web service's reply that calls one tool, in the shape the emulation asks for."""
    return json.dumps({"tool_calls": [{"name": name, "arguments": arguments}]})


# -- the services: replicas and the gateway on a loop of their own ----------------------------------


@dataclass
class Services:
    gateway: GatewayProcess
    broken: OpenAIFake  # status_500: the primary of local-route and web-route
    native: OpenAIFake  # tool_call: the direct route
    flaky: OpenAIFake  # tool_call_then_fail: the primary of flaky-local and flaky-web
    liaobots: LiaobotsReplica

    @property
    def api_base(self) -> str:
        return self.gateway.api_base

    def reset(self) -> None:
        """Forget what earlier tests sent and scripted (between tests nothing is in flight)."""
        for fake in (self.broken, self.native, self.flaky):
            fake.bodies.clear()
            fake.requests.clear()
            fake.violations.clear()
            fake.chat_count = 0
            fake.tool_arguments = dict(DEFAULT_ARGUMENTS)
        self.liaobots.replies.clear()
        self.liaobots.requests.clear()
        self.liaobots.violations.clear()


def gateway_config(services: dict[str, Any]) -> dict[str, Any]:
    liaobots = {"provider": "Liaobots", "model": "gpt-4o", "base_url": services["liaobots"].base_url}
    return {
        "router": {"retries": 1, "connect_timeout": 5.0, "first_byte_timeout": 30.0, "idle_timeout": 30.0,
                   "timeout": 300.0},
        "server": {"request_log": False, "web_ui": False},
        "providers": {
            "broken": {"base_url": services["broken"].api_base, "models": ["fake-small"]},
            "native": {"base_url": services["native"].api_base, "models": ["fake-small"]},
            # Two names for one fake, so each route's failures count towards its own cooldown.
            "flaky-a": {"base_url": services["flaky"].api_base, "models": ["fake-small"]},
            "flaky-b": {"base_url": services["flaky"].api_base, "models": ["fake-small"]},
        },
        "routes": {
            "local-route": ["broken/fake-small", "Local"],
            "web-route": ["broken/fake-small", liaobots],
            "direct": ["native/fake-small"],
            "flaky-local": ["flaky-a/fake-small", "Local"],
            "flaky-web": ["flaky-b/fake-small", liaobots],
            "web-only": [liaobots],
        },
    }


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    background = BackgroundLoop()
    replicas: dict[str, Any] = {"broken": OpenAIFake("status_500"), "native": OpenAIFake("tool_call"),
                                "flaky": OpenAIFake("tool_call_then_fail"), "liaobots": LiaobotsReplica()}
    started: list[Any] = []
    gateway: GatewayProcess | None = None
    try:
        for replica in replicas.values():
            background.run(replica.start())
            started.append(replica)
        gateway = GatewayProcess(gateway_config(replicas), tmp_path_factory.mktemp("gateway"))
        background.run(gateway.__aenter__())
        yield Services(gateway, **replicas)
    finally:
        if gateway is not None:
            background.run(gateway.stop())
        for replica in started:
            background.run(replica.stop())
        background.close()


@pytest.fixture
def stack(services: Services) -> Iterator[Services]:
    services.reset()
    yield services
    assert services.liaobots.violations == []  # the web service only ever got text it takes
    assert services.native.violations == []


@pytest.fixture
def sdk(stack: Services) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.api_base, api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT) as client:
        yield client


ROUTE = "route"
WEB = pytest.param("web-route", id="web")
LOCAL = pytest.param("local-route", id="local", marks=pytest.mark.model)
DIRECT = pytest.param("direct", id="direct")


def script(stack: Services, route: str, *replies: str) -> None:
    """Queue the web service's replies for a request over ``route`` (other routes need none)."""
    if route.endswith("web") or route == "web-route":
        stack.liaobots.replies.extend(replies)


def limits(route: str) -> dict[str, Any]:
    """A small output budget for the embedded model (the fakes ignore it)."""
    return {"max_tokens": LOCAL_TOKENS} if "local" in route else {}


def assert_valid_call(call: Any, name: str | None = None) -> dict[str, Any]:
    """A tool call that names one of TOOLS (``name`` when given) with arguments that validate."""
    assert call.type == "function" and call.id
    assert call.function.name in SCHEMAS
    if name is not None:
        assert call.function.name == name
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments  # type: ignore[no-any-return]


def web_messages(stack: Services) -> list[list[dict[str, Any]]]:
    """The conversations the web service received, after checking they are text only."""
    conversations = [body["messages"] for body in stack.liaobots.chat_bodies()]
    for messages in conversations:
        for message in messages:
            assert set(message) == {"role", "content"}
            assert message["role"] in ROLES and isinstance(message["content"], str)
    return conversations


# -- the web replica's own guard -------------------------------------------------------------------


@pytest.mark.parametrize("message", [
    pytest.param({"role": "user", "content": [{"type": "text", "text": "hi"}]}, id="content-list"),
    pytest.param({"role": "tool", "tool_call_id": "call_1", "content": "18"}, id="tool-role"),
    pytest.param({"role": "system", "content": "Be terse."}, id="system-role"),
])
def test_the_web_replica_refuses_what_the_service_would(stack: Services, message: dict[str, Any]) -> None:
    """What makes the web-route tests' text-only assertions bite: anything but text is a 400."""
    code = "user-code-1"
    stack.liaobots.valid_codes.add(code)
    body = {"conversationId": str(uuid.uuid4()), "model": MODELS["gpt-4o-2024-08-06"], "key": "",
            "prompt": "You are a helpful assistant.", "messages": [message]}
    request = urllib.request.Request(stack.liaobots.url("/api/chat"), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "x-auth-code": code})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT)
    info.value.close()
    assert info.value.code == 400
    assert len(stack.liaobots.violations) == 1
    stack.liaobots.violations.clear()  # expected here; the fixture checks no other test made one


# -- tools -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(ROUTE, [WEB, LOCAL, DIRECT])
def test_required_tool_choice_gives_a_valid_call(stack: Services, sdk: openai.OpenAI, route: str) -> None:
    script(stack, route, call_reply("get_weather", {"city": "Paris", "unit": "celsius"}))
    answer = sdk.chat.completions.create(model=route, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                         **limits(route))
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert_valid_call(call)
    if route == "direct":
        assert stack.native.last_body["tool_choice"] == "required"
        assert stack.native.last_body["tools"] == TOOLS


@pytest.mark.parametrize(ROUTE, [WEB, LOCAL, DIRECT])
def test_named_tool_choice_calls_that_tool(stack: Services, sdk: openai.OpenAI, route: str) -> None:
    script(stack, route, call_reply("get_time", {"timezone": "Asia/Tokyo"}))
    stack.native.tool_arguments = {"timezone": "Asia/Tokyo"}
    named: Any = {"type": "function", "function": {"name": "get_time"}}
    answer = sdk.chat.completions.create(model=route, messages=ASK_TIME, tools=TOOLS, tool_choice=named,
                                         **limits(route))
    calls = answer.choices[0].message.tool_calls
    assert calls and len(calls) == 1
    assert_valid_call(calls[0], "get_time")
    if route == "direct":
        assert stack.native.last_body["tool_choice"] == named


def test_named_tool_choice_refuses_a_web_reply_that_calls_another_tool(stack: Services, sdk: openai.OpenAI
                                                                       ) -> None:
    """The wrong tool twice (the reply, then the repair): an error before any output, not a 200."""
    wrong = call_reply("get_weather", {"city": "Tokyo"})
    stack.liaobots.replies.extend([wrong, wrong])
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="web-route", messages=ASK_TIME, tools=TOOLS,
                                    tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert info.value.status_code >= 500
    assert len(stack.liaobots.chat_bodies()) == 2  # the reply and one repair turn


@pytest.mark.parametrize(("route", "reply"), [
    pytest.param("web-route", call_reply("get_weather", {"city": "Paris"}), id="web-call"),
    pytest.param("web-route", "I can answer that without a tool: it is sunny.", id="web-prose"),
    pytest.param("local-route", "", id="local", marks=pytest.mark.model),
    pytest.param("direct", "", id="direct"),
])
def test_auto_tool_choice_gives_text_or_a_valid_call(stack: Services, sdk: openai.OpenAI, route: str,
                                                     reply: str) -> None:
    script(stack, route, reply)
    answer = sdk.chat.completions.create(model=route, messages=ASK_WEATHER, tools=TOOLS, tool_choice="auto",
                                         **limits(route))
    message = answer.choices[0].message
    if message.tool_calls:
        assert answer.choices[0].finish_reason == "tool_calls"
        for call in message.tool_calls:
            assert_valid_call(call)
    else:
        assert message.content and answer.choices[0].finish_reason in ("stop", "length")
    if route == "web-route":
        assert bool(message.tool_calls) == reply.startswith("{")
        if not message.tool_calls:
            assert message.content == reply


def test_a_web_reply_that_breaks_the_schema_gets_one_repair_turn(stack: Services, sdk: openai.OpenAI) -> None:
    stack.liaobots.replies.extend([call_reply("get_weather", {"city": 42}),
                                   call_reply("get_weather", {"city": "Paris"})])
    answer = sdk.chat.completions.create(model="web-route", messages=ASK_WEATHER, tools=TOOLS,
                                         tool_choice="required")
    calls = answer.choices[0].message.tool_calls
    assert calls and len(calls) == 1
    assert assert_valid_call(calls[0], "get_weather") == {"city": "Paris"}
    first, repair = web_messages(stack)
    assert repair[:len(first)] == first  # the repair turn continues the same conversation
    assert repair[-2] == {"role": "assistant", "content": call_reply("get_weather", {"city": 42})}
    assert repair[-1]["role"] == "user"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_web_reply_still_wrong_after_the_repair_is_an_error_before_any_output(
        stack: Services, sdk: openai.OpenAI, stream: bool) -> None:
    stack.liaobots.replies.extend(["Sure! I will look that up.", "Let me check the weather for you."])
    with pytest.raises(openai.APIStatusError) as info:
        if stream:
            list(sdk.chat.completions.create(model="web-route", messages=ASK_WEATHER, tools=TOOLS,
                                             tool_choice="required", stream=True))
        else:
            sdk.chat.completions.create(model="web-route", messages=ASK_WEATHER, tools=TOOLS,
                                        tool_choice="required")
    assert info.value.status_code >= 500  # a status, not a 200 whose stream ends in an error
    assert len(stack.liaobots.chat_bodies()) == 2


def _streamed_calls(sdk: openai.OpenAI, route: str, **fields: Any) -> tuple[Any, dict[int, list[str]], int]:
    """Stream with the SDK's helper: the final completion, every arguments fragment per call
    index (as the chunks carried them) and how many chunks named a tool."""
    fragments: dict[int, list[str]] = {}
    named = 0
    with sdk.chat.completions.stream(model=route, messages=ASK_WEATHER, tools=TOOLS, **fields) as stream:
        for event in stream:
            if event.type != "chunk":
                continue
            for choice in event.chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    if delta.function is not None:
                        named += bool(delta.function.name)
                        fragments.setdefault(delta.index, []).append(delta.function.arguments or "")
        final = stream.get_final_completion()
    return final, fragments, named


@pytest.mark.parametrize(ROUTE, [WEB, LOCAL, DIRECT])
def test_streamed_tool_calls_assemble_without_repeats(stack: Services, sdk: openai.OpenAI, route: str) -> None:
    script(stack, route, call_reply("get_weather", {"city": "Paris", "unit": "celsius"}))
    final, fragments, named = _streamed_calls(sdk, route, tool_choice="required", **limits(route))
    calls = final.choices[0].message.tool_calls
    assert calls and final.choices[0].finish_reason == "tool_calls"
    assert sorted(fragments) == list(range(len(calls)))
    assert named == len(calls)  # each call's name came once
    for index, call in enumerate(calls):
        assert_valid_call(call)
        assert "".join(fragments[index]) == call.function.arguments  # nothing repeated, nothing lost
    if route == "direct":
        pieces = [piece for piece in fragments[0] if piece]
        assert pieces == stack.native.tool_call_fragments()


# -- a whole tool loop -------------------------------------------------------------------------------


def _tool_result(arguments: dict[str, Any]) -> str:
    return json.dumps({"city": arguments.get("city", "Paris"), "temperature": 18, "unit": "celsius"})


@pytest.mark.parametrize(ROUTE, [WEB, LOCAL, DIRECT])
def test_two_turn_tool_loop(stack: Services, sdk: openai.OpenAI, route: str) -> None:
    final_words = "It is 18 degrees Celsius in Paris."
    script(stack, route, call_reply("get_weather", {"city": "Paris"}), final_words)
    first = sdk.chat.completions.create(model=route, messages=ASK_WEATHER, tools=TOOLS,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        **limits(route))
    calls = first.choices[0].message.tool_calls
    assert calls
    arguments = assert_valid_call(calls[0], "get_weather")
    assistant: Any = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                         "arguments": call.function.arguments}}
        for call in calls]}
    results: Any = [{"role": "tool", "tool_call_id": call.id, "content": _tool_result(arguments)} for call in calls]
    history: Any = [*ASK_WEATHER, assistant, *results]
    # The embedded model is asked for its final answer in text ("none": a short answer, where "auto"
    # lets it write up to max_tokens under the grammar); the others choose, as clients let them.
    local = route == "local-route"
    final_turn: dict[str, Any] = {"tool_choice": "none", "max_tokens": 32} if local else {"tool_choice": "auto"}
    second = sdk.chat.completions.create(model=route, messages=history, tools=TOOLS, **final_turn)
    message = second.choices[0].message
    assert not message.tool_calls and message.content
    if route == "web-route":
        assert message.content == final_words
        conversations = web_messages(stack)
        assert len(conversations) == 2
        rendered = conversations[1]
        assert any(_tool_result(arguments) in m["content"] for m in rendered if m["role"] == "user")
        assert any("get_weather" in m["content"] for m in rendered if m["role"] == "assistant")
    if route == "direct":
        sent = stack.native.last_body["messages"]
        assert sent[1]["tool_calls"] == assistant["tool_calls"] and sent[2:] == results
        assert message.content == stack.native.answer


# -- structured output -------------------------------------------------------------------------------


@pytest.mark.parametrize(ROUTE, [WEB, LOCAL])
def test_openai_parse_with_a_pydantic_model(stack: Services, sdk: openai.OpenAI, route: str) -> None:
    script(stack, route, WEATHER_REPLY)
    answer = sdk.chat.completions.parse(model=route, response_format=Weather, **limits(route),
                                        messages=user("Give the weather in Paris as JSON: city and temperature "
                                                      "in Celsius."))
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Weather)
    if route == "web-route":
        assert parsed == Weather(city="Paris", temperature=18)


def _langchain(stack: Services, route: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=stack.api_base, api_key="unused", model=route,  # type: ignore[arg-type]
                      max_retries=0, timeout=CLIENT_TIMEOUT, **limits(route))


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
@pytest.mark.parametrize(ROUTE, [WEB, LOCAL])
def test_langchain_structured_output(stack: Services, route: str, method: str) -> None:
    reply = call_reply("Weather", {"city": "Paris", "temperature": 18}) if method == "function_calling" \
        else WEATHER_REPLY
    script(stack, route, reply)
    structured = _langchain(stack, route).with_structured_output(Weather, method=method)  # type: ignore[arg-type]
    result = structured.invoke("Give the weather in Paris: city and temperature in Celsius.")
    assert isinstance(result, Weather)
    if route == "web-route":
        assert result == Weather(city="Paris", temperature=18)


@pytest.mark.parametrize(ROUTE, [WEB, LOCAL])
def test_json_object_gives_a_json_object(stack: Services, sdk: openai.OpenAI, route: str) -> None:
    """A whole answer is a JSON object. The embedded model's grammar bounds each string and member
    count, not the whole object, so its answer may run into max_tokens: then it says "length"
    and the text is the start of an object, as OpenAI's JSON mode does; never prose with "stop"."""
    script(stack, route, 'Here it is: ```json\n{"city": "Paris", "temperature": 18}\n```')
    prompt = 'Reply with a JSON object with two keys, "city" (a string) and "temperature" (a number), for Paris.'
    answer = sdk.chat.completions.create(model=route, response_format={"type": "json_object"}, **limits(route),
                                         messages=user(prompt))
    choice = answer.choices[0]
    content = choice.message.content
    assert content is not None
    if choice.finish_reason == "length":
        assert route == "local-route" and content.startswith("{")
    else:
        assert choice.finish_reason == "stop" and isinstance(json.loads(content), dict)
    if route == "web-route":
        assert json.loads(content) == {"city": "Paris", "temperature": 18}


# -- images ------------------------------------------------------------------------------------------


IMAGE_FIELD = "messages[0].content[1]"
FALLBACKS = [pytest.param("local-route", "Local", id="local"), pytest.param("web-route", "Liaobots", id="web")]


def _image_refusal(sdk: openai.OpenAI, route: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model=route, messages=[IMAGE_MESSAGE])
    return info.value


@pytest.mark.parametrize(("route", "skipped"), FALLBACKS)
def test_an_image_is_never_dropped_by_a_fallback_that_cannot_see(stack: Services, sdk: openai.OpenAI, route: str,
                                                                 skipped: str) -> None:
    """The primary (which takes images) fails with 500 and the fallback cannot take images: an
    error listing both attempts, the fallback's saying why it was skipped; it got nothing."""
    error = _image_refusal(sdk, route)
    body = error.body
    assert isinstance(body, dict)
    attempts = body.get("attempts")
    assert isinstance(attempts, list) and len(attempts) == 2, body
    primary = [a for a in attempts if a["provider"] == "broken"]
    assert len(primary) == 1 and primary[0]["error"] == "UpstreamError" and not primary[0]["skipped"]
    fallback = [a for a in attempts if a["provider"] == skipped]
    assert len(fallback) == 1 and fallback[0]["skipped"] and fallback[0]["error"] == "UnsupportedFeature"
    assert "image" in fallback[0]["message"] and IMAGE_FIELD in fallback[0]["message"]
    assert stack.broken.chat_count == 1
    assert stack.broken.last_body["messages"] == [IMAGE_MESSAGE]
    assert stack.liaobots.chat_bodies() == []


@pytest.mark.parametrize(("route", "skipped"), FALLBACKS)
def test_an_image_whose_only_capable_target_failed_is_a_retryable_502(stack: Services, sdk: openai.OpenAI,
                                                                      route: str, skipped: str) -> None:
    """The one target that takes images failed for a passing reason, so the answer is a 502 a client
    may retry (a 400 would say never to), and it tells why the other target was not tried."""
    error = _image_refusal(sdk, route)
    assert error.status_code == 502
    assert error.code == "all_providers_failed"
    assert "image" in error.message and IMAGE_FIELD in error.message and "skipped" in error.message


def test_an_image_over_a_route_where_no_target_can_see_is_a_400_naming_the_field(stack: Services,
                                                                                 sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="web-only", messages=[IMAGE_MESSAGE])
    error = info.value
    assert error.code == "unsupported_feature" and error.param == IMAGE_FIELD
    assert "image" in error.message and IMAGE_FIELD in error.message
    assert stack.liaobots.chat_bodies() == []


def test_an_image_over_the_direct_route_reaches_the_upstream_as_sent(stack: Services, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model="direct", messages=[IMAGE_MESSAGE])
    assert answer.choices[0].message.content == stack.native.answer
    assert stack.native.last_body["messages"] == [IMAGE_MESSAGE]
    raw = stack.native.requests_to("/v1/chat/completions")[-1].body
    assert f"data:image/png;base64,{PNG_1X1}".encode() in raw


# -- n and logprobs ----------------------------------------------------------------------------------


def test_n_and_logprobs_pass_through_the_direct_route(stack: Services, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model="direct", messages=ASK_WEATHER, n=2, logprobs=True, top_logprobs=2)
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert choice.message.content == stack.native.answer
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(len(item.top_logprobs) == 2 for item in choice.logprobs.content)
    body = stack.native.last_body
    assert (body["n"], body["logprobs"], body["top_logprobs"]) == (2, True, 2)


@pytest.mark.parametrize("fields", [{"n": 2}, {"logprobs": True}], ids=["n", "logprobs"])
def test_n_and_logprobs_over_the_web_route_are_never_dropped(stack: Services, sdk: openai.OpenAI,
                                                             fields: dict[str, Any]) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="web-route", messages=ASK_WEATHER, **fields)
    attempts = info.value.body.get("attempts") if isinstance(info.value.body, dict) else None
    assert attempts and any(a["provider"] == "Liaobots" and a["skipped"] for a in attempts)
    assert stack.liaobots.chat_bodies() == []


@pytest.mark.model
def test_n_and_logprobs_over_the_local_route(stack: Services, sdk: openai.OpenAI) -> None:
    answer = sdk.chat.completions.create(model="local-route", messages=user("Hi"),
                                         n=2, logprobs=True, top_logprobs=3, max_tokens=6)
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert choice.message.content
        assert choice.logprobs is not None and choice.logprobs.content
        for item in choice.logprobs.content:
            assert item.logprob <= 0 and len(item.top_logprobs) == 3


# -- a stream that breaks after a tool-call fragment -------------------------------------------------


@pytest.mark.parametrize("route", [pytest.param("flaky-local", marks=pytest.mark.model), "flaky-web"])
async def test_a_stream_that_breaks_after_a_tool_call_fragment_is_never_repeated(stack: Services,
                                                                                  route: str) -> None:
    script(stack, route, call_reply("get_weather", {"city": "Paris"}))
    fragments: dict[int, list[str]] = {}
    heads: dict[int, int] = {}
    failed: openai.APIError | None = None
    async with openai.AsyncOpenAI(base_url=stack.api_base, api_key="unused", max_retries=0,
                                  timeout=CLIENT_TIMEOUT) as client:
        stream = await client.chat.completions.create(model=route, messages=ASK_WEATHER, tools=TOOLS,
                                                      tool_choice="required", stream=True, **limits(route))
        try:
            async for chunk in stream:
                for choice in chunk.choices:
                    for delta in choice.delta.tool_calls or []:
                        if delta.id or (delta.function and delta.function.name):
                            heads[delta.index] = heads.get(delta.index, 0) + 1
                        if delta.function and delta.function.arguments:
                            fragments.setdefault(delta.index, []).append(delta.function.arguments)
        except openai.APIError as error:
            failed = error
    assert stack.flaky.chat_count == 1  # the breaking target was tried first
    assert all(count == 1 for count in heads.values())  # no call started twice
    if failed is None:  # only a whole, valid call may arrive without an error
        assert fragments and set(heads) == set(fragments)
        for pieces in fragments.values():
            arguments = json.loads("".join(pieces))
            assert any(_valid(arguments, schema) for schema in SCHEMAS.values())
    else:
        assert fragments == {0: stack.flaky.tool_call_fragments()[:1]}  # what the client got, once


def _valid(instance: Any, schema: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


# -- the llm CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def llm_home(stack: Services, tmp_path: Path) -> Path:
    """An ``LLM_USER_PATH`` whose extra-openai-models.yaml points llm's models at the gateway."""
    entries = []
    for model_id, route in (("pb-web", "web-route"), ("pb-local", "local-route"), ("pb-direct", "direct")):
        entries.append(f"- model_id: {model_id}\n  model_name: {route}\n  api_base: {stack.api_base}\n"
                       "  supports_tools: true\n  supports_schema: true\n  vision: true\n")
    (tmp_path / "extra-openai-models.yaml").write_text("".join(entries), encoding="utf-8")
    return tmp_path


def run_llm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    llm = Path(sys.executable).with_name("llm")
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_LOAD_PLUGINS": "", "OPENAI_API_KEY": "unused"}
    return subprocess.run([str(llm), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env,
                          stdin=subprocess.DEVNULL, check=False)


WEATHER_FUNCTION = '''
def get_weather(city: str, unit: str = "celsius") -> str:
    """The current weather in a city."""
    return f"18 degrees {unit} in {city}"
'''


def test_llm_tool_round_trip_over_the_web_route(stack: Services, llm_home: Path) -> None:
    stack.liaobots.replies.extend([call_reply("get_weather", {"city": "Paris"}), "It is 18 degrees in Paris."])
    result = run_llm(llm_home, "-m", "pb-web", "--no-log", "--functions", WEATHER_FUNCTION,
                     "What is the weather in Paris?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "It is 18 degrees in Paris."
    _, second = web_messages(stack)
    assert any("18 degrees celsius in Paris" in m["content"] for m in second if m["role"] == "user")


def test_llm_tool_round_trip_over_the_direct_route(stack: Services, llm_home: Path) -> None:
    result = run_llm(llm_home, "-m", "pb-direct", "--no-log", "--functions", WEATHER_FUNCTION,
                     "What is the weather in Paris?")
    assert result.returncode == 0, result.stderr
    assert stack.native.answer in result.stdout
    first, second = stack.native.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 1 and tool_messages[0]["content"] == "18 degrees celsius in Paris"


@pytest.mark.parametrize("model", [pytest.param("pb-web", id="web"),
                                   pytest.param("pb-local", id="local", marks=pytest.mark.model)])
def test_llm_schema_gives_valid_json(stack: Services, llm_home: Path, model: str) -> None:
    stack.liaobots.replies.append(WEATHER_REPLY)
    schema = json.dumps(Weather.model_json_schema())
    result = run_llm(llm_home, "-m", model, "--no-log", "--schema", schema, "-o", "max_tokens", str(LOCAL_TOKENS),
                     "Invent the weather in Paris: city and temperature in Celsius.")
    assert result.returncode == 0, result.stderr
    Weather.model_validate_json(result.stdout)


def test_llm_schema_that_the_web_service_never_follows_fails_the_command(stack: Services, llm_home: Path) -> None:
    stack.liaobots.replies.extend(["It is sunny in Paris.", "Still sunny, 18 degrees."])
    result = run_llm(llm_home, "-m", "pb-web", "--no-log", "--schema", json.dumps(Weather.model_json_schema()),
                     "Invent the weather in Paris.")
    assert result.returncode != 0
    assert "sunny" not in result.stdout


def test_llm_image_attachment_over_the_web_route_fails_the_command(stack: Services, llm_home: Path,
                                                                    tmp_path: Path) -> None:
    import base64

    image = tmp_path / "pixel.png"
    image.write_bytes(base64.b64decode(PNG_1X1))
    result = run_llm(llm_home, "-m", "pb-web", "--no-log", "-a", str(image), "What is in this picture?")
    assert result.returncode != 0
    assert result.stdout.strip() == ""
    assert stack.liaobots.chat_bodies() == []
