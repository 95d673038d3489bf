"""The official ``openai`` SDK's ``client.responses`` against a real ``patchbay serve`` process:
``/v1/responses`` whole and streamed, ``instructions``, ``previous_response_id`` chains and
``store``, ``GET /v1/responses/{id}``, function tools and their outputs, ``text.format``, the
SDK's error classes, a failure mid-stream, and the rate limits and request log every chat
endpoint shares.

The fakes and the gateway run on an event loop in a background thread, so the synchronous client
can block the test's thread while they answer. Routes of the shared gateway (API keys required):

- ``small``: a normal OpenAI fake (``plain``);
- ``tools``: a fake that calls the first tool it is given (``tool_call``);
- ``limited`` (429), ``midstream`` (an error event after some text), ``cut`` (the connection
  dropped halfway through the answer), ``stall`` (half the answer, then a long silence),
  ``flaky`` (a streamed tool call whose connection drops after its first fragment);
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

import httpx
import openai
import pytest

from tests.replicas.base import DEFAULT_ANSWER
from tests.replicas.openai_fake import OpenAIFake, text_of
from tests.support.background_loop import BackgroundLoop
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]


API_KEY = "sk-responses-sdk-test-3b8f"
#: Seconds a client waits for one answer, the background loop for a start or a stop, the CLI to run.
CLIENT_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
#: Responses function tools (typed Any: the SDK's TypedDicts do not accept plain dicts for mypy).
TOOLS: Any = [
    {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
     "parameters": WEATHER_SCHEMA, "strict": True},
    {"type": "function", "name": "get_time", "description": "The current time in a timezone.",
     "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}, "strict": False},
]


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


SCENARIOS = {"plain": "normal", "tools": "tool_call", "limited": "status_429", "midstream": "mid_stream_error",
             "cut": "disconnect", "stall": "stall", "flaky": "tool_call_then_fail"}


def gateway_config(fakes: dict[str, OpenAIFake], **extra: Any) -> dict[str, Any]:
    """Every fake as a provider of its own; the routes of the module docstring."""
    return {
        "router": {"retries": 1, "first_byte_timeout": 10.0, "idle_timeout": 10.0, "timeout": 20.0},
        "providers": {**{name: {"base_url": fake.api_base, "models": ["fake-small"]} for name, fake in fakes.items()},
                      # the plain fake again, as a service that continues a partial answer (prefill)
                      "backup": {"base_url": fakes["plain"].api_base, "models": ["fake-small"], "prefill": True}},
        "routes": {"small": ["plain/fake-small"], "tools": ["tools/fake-small"], "limited": ["limited/fake-small"],
                   "midstream": ["midstream/fake-small"], "cut": ["cut/fake-small"], "stall": ["stall/fake-small"],
                   "flaky": ["flaky/fake-small"], "resilient": ["midstream/fake-small", "backup/fake-small"]},
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
def client(stack: Services) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.gateway.api_base, api_key=API_KEY, max_retries=0,
                       timeout=CLIENT_TIMEOUT) as sdk:
        yield sdk


def function_calls(response: Any) -> list[Any]:
    """A Response's function_call output items."""
    return [item for item in response.output if item.type == "function_call"]


# -- text ---------------------------------------------------------------------------------------------


def test_create_with_a_string_input(client: openai.OpenAI, stack: Services) -> None:
    response = client.responses.create(model="small", input="Hello", max_output_tokens=64)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == stack.plain.answer
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert response.usage is not None and response.usage.output_tokens > 0
    sent = stack.plain.bodies[-1]
    assert sent["messages"] == [{"role": "user", "content": "Hello"}]
    assert sent["max_tokens"] == 64


def test_instructions_are_a_system_message(client: openai.OpenAI, stack: Services) -> None:
    response = client.responses.create(model="small", input="Hello", instructions="Answer in one line.")
    assert response.output_text == stack.plain.answer
    assert response.instructions == "Answer in one line."
    messages = stack.plain.bodies[-1]["messages"]
    assert messages[0]["role"] in ("system", "developer")
    assert "Answer in one line." in json.dumps(messages[0]["content"])
    assert messages[-1]["role"] == "user" and "Hello" in json.dumps(messages[-1]["content"])


def test_stream_deltas_add_up_to_the_final_response(client: openai.OpenAI, stack: Services) -> None:
    with client.responses.stream(model="small", input="Hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1  # it did stream
    assert "".join(deltas) == stack.plain.answer
    assert final.output_text == stack.plain.answer
    assert final.status == "completed"
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert stack.plain.bodies[-1]["stream"] is True


def test_the_raw_stream_is_ordered_and_numbered(stack: Services) -> None:
    """The events a client without the SDK reads: names match types, sequence numbers count up from
    0, one output item whose id every part event names, one response id throughout."""
    with httpx.stream("POST", f"{stack.gateway.api_base}/responses", timeout=CLIENT_TIMEOUT,
                      json={"model": "small", "input": "Hello", "stream": True},
                      headers={"x-api-key": API_KEY}) as raw:  # Anthropic-style auth works here too
        assert raw.status_code == 200
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = list(raw.iter_lines())
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    events = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert names == [event["type"] for event in events]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert names[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert names[-1] == "response.completed"
    ids = {event["response"]["id"] for event in events if "response" in event}
    assert len(ids) == 1
    item = events[2]["item"]["id"]
    assert {event["item_id"] for event in events if "item_id" in event} == {item}
    done = next(event for event in events if event["type"] == "response.output_text.done")
    assert done["text"] == stack.plain.answer
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == stack.plain.answer


async def test_async_create_and_stream(stack: Services) -> None:
    async with openai.AsyncOpenAI(base_url=stack.gateway.api_base, api_key=API_KEY, max_retries=0,
                                  timeout=CLIENT_TIMEOUT) as sdk:
        whole = await sdk.responses.create(model="small", input="Hello")
        stream = await sdk.responses.create(model="small", input="Hello", stream=True)
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
    assert whole.output_text == "".join(deltas) == stack.plain.answer


# -- stored responses -----------------------------------------------------------------------------------


def test_previous_response_id_sends_the_earlier_turns(client: openai.OpenAI, stack: Services) -> None:
    first = client.responses.create(model="small", input="My name is Ada.", instructions="Be kind.")
    second = client.responses.create(model="small", input="What is my name?", previous_response_id=first.id)
    assert second.output_text == stack.plain.answer
    assert second.previous_response_id == first.id
    messages = stack.plain.bodies[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]  # instructions are not inherited
    assert text_of(messages[0]["content"]) == "My name is Ada."
    assert text_of(messages[1]["content"]) == stack.plain.answer
    assert text_of(messages[2]["content"]) == "What is my name?"

    with client.responses.stream(model="small", input="And again?", previous_response_id=second.id) as stream:
        assert stream.get_final_response().output_text == stack.plain.answer
    assert [m["role"] for m in stack.plain.bodies[-1]["messages"]] == ["user", "assistant"] * 2 + ["user"]


def test_retrieve_returns_the_stored_response(client: openai.OpenAI, stack: Services) -> None:
    created = client.responses.create(model="small", input="Hello", metadata={"case": "retrieve"})
    shown = client.responses.retrieve(created.id)
    assert shown.id == created.id
    assert shown.output_text == created.output_text == stack.plain.answer
    assert shown.status == "completed"
    assert shown.metadata == {"case": "retrieve"}
    with client.responses.stream(model="small", input="Hello") as stream:
        streamed = stream.get_final_response()
    assert client.responses.retrieve(streamed.id).output_text == stack.plain.answer  # streamed ones too


def test_retrieve_needs_the_key(client: openai.OpenAI, stack: Services) -> None:
    created = client.responses.create(model="small", input="Hello")
    with openai.OpenAI(base_url=stack.gateway.api_base, api_key="wrong", max_retries=0,
                       timeout=CLIENT_TIMEOUT) as sdk, pytest.raises(openai.AuthenticationError):
        sdk.responses.retrieve(created.id)


def test_retrieve_of_an_unknown_id_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve("resp_" + "0" * 48)
    assert info.value.status_code == 404


def test_input_items_are_not_an_endpoint_here(client: openai.OpenAI) -> None:
    created = client.responses.create(model="small", input="Hello")
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.input_items.list(created.id)
    assert "no endpoint at" in info.value.message  # not "no response" for an id with a path after it


def test_a_streamed_response_is_stored_before_its_completed_event(client: openai.OpenAI) -> None:
    with client.responses.stream(model="small", input="Hello") as stream:
        for event in stream:
            if event.type == "response.completed":  # act on it at once, on another connection
                assert client.responses.retrieve(event.response.id).status == "completed"
                break
        else:
            pytest.fail("no response.completed event")


def test_store_false_is_not_kept(client: openai.OpenAI, stack: Services) -> None:
    unstored = client.responses.create(model="small", input="Hello", store=False)
    assert unstored.output_text == stack.plain.answer
    assert getattr(unstored, "store", None) is False  # echoed (this SDK version has no attribute for it)
    calls = len(stack.plain.bodies)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="small", input="Again", previous_response_id=unstored.id)
    assert info.value.status_code == 400
    assert info.value.param == "previous_response_id"
    assert len(stack.plain.bodies) == calls  # refused before any upstream call
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


# -- tools and structured output ------------------------------------------------------------------------


def test_function_call_then_its_output(client: openai.OpenAI, stack: Services) -> None:
    first = client.responses.create(model="tools", input="What is the weather in Paris? Use the tool.", tools=TOOLS)
    [call] = function_calls(first)
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == stack.tools.tool_arguments
    assert call.call_id
    sent = stack.tools.bodies[-1]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA

    follow_up: Any = [{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, sunny"}]
    second = client.responses.create(model="tools", input=follow_up, tools=TOOLS, previous_response_id=first.id)
    assert second.output_text == stack.tools.answer
    assert function_calls(second) == []
    messages = stack.tools.bodies[-1]["messages"]
    assistant = next(m for m in messages if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["id"] == call.call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "18 degrees, sunny"} or (
        messages[-1]["role"] == "tool" and messages[-1]["tool_call_id"] == call.call_id
        and "18 degrees, sunny" in json.dumps(messages[-1]["content"]))


def test_tool_choice_and_parallel_tool_calls_pass_through(client: openai.OpenAI, stack: Services) -> None:
    response = client.responses.create(model="tools", input="What time is it in Tokyo?", tools=TOOLS,
                                       tool_choice={"type": "function", "name": "get_time"},
                                       parallel_tool_calls=False)
    assert [call.name for call in function_calls(response)] == ["get_time"]
    sent = stack.tools.bodies[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert sent["parallel_tool_calls"] is False


def test_stateless_tool_loop_with_the_whole_input(client: openai.OpenAI, stack: Services) -> None:
    """As Codex does with ``store`` off: the whole conversation, function_call item included, each time."""
    question: Any = [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}]
    with client.responses.stream(model="tools", input=question, tools=TOOLS, store=False) as stream:
        events = list(stream)
        first = stream.get_final_response()
    [call] = function_calls(first)
    assert json.loads(call.arguments) == stack.tools.tool_arguments
    fragments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(fragments) == stack.tools.tool_arguments
    history: Any = [*question,
                    {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                    {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}]
    second = client.responses.create(model="tools", input=history, tools=TOOLS, store=False)
    assert second.output_text == stack.tools.answer
    assert stack.tools.bodies[-1]["messages"][-1]["role"] == "tool"


#: A 1x1 PNG, as a client sends an image inline.
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_an_input_image_reaches_the_upstream(client: openai.OpenAI, stack: Services) -> None:
    url = f"data:image/png;base64,{PNG_1X1}"
    content: Any = [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                                 {"type": "input_image", "image_url": url, "detail": "low"}]}]
    response = client.responses.create(model="small", input=content)
    assert response.output_text == stack.plain.answer
    parts = stack.plain.bodies[-1]["messages"][-1]["content"]
    assert {"type": "text", "text": "What is this?"} in parts
    [image] = [part for part in parts if part["type"] == "image_url"]
    assert image["image_url"]["url"] == url and image["image_url"].get("detail") == "low"


def test_json_schema_text_format_passes_through(client: openai.OpenAI, stack: Services) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    text: Any = {"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}}
    stack.plain.answer = json.dumps({"city": "Paris"})
    try:
        response = client.responses.create(model="small", input="Where?", text=text)
    finally:
        stack.plain.answer = DEFAULT_ANSWER
    assert json.loads(response.output_text) == {"city": "Paris"}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    sent = stack.plain.bodies[-1]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "place"
    assert sent["json_schema"]["schema"] == schema
    assert sent["json_schema"]["strict"] is True


# -- errors -----------------------------------------------------------------------------------------------


def test_wrong_key_is_authentication_error(stack: Services) -> None:
    with openai.OpenAI(base_url=stack.gateway.api_base, api_key="wrong", max_retries=0,
                       timeout=CLIENT_TIMEOUT) as sdk, pytest.raises(openai.AuthenticationError) as info:
        sdk.responses.create(model="small", input="Hello")
    assert info.value.status_code == 401
    assert stack.plain.bodies == []


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="Hello")
    assert info.value.status_code == 404
    with pytest.raises(openai.NotFoundError), client.responses.stream(model="no-such-model", input="Hello") as stream:
        list(stream)


def test_bad_input_is_400_naming_it(client: openai.OpenAI) -> None:
    bad: Any = [{"type": "message", "role": "user", "content": [{"type": "input_nonsense"}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="small", input=bad)
    assert info.value.param is not None and info.value.param.startswith("input[0].content[0]")


def test_upstream_rate_limit_is_rate_limit_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="limited", input="Hello")
    assert info.value.status_code == 429
    assert int(info.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError), client.responses.stream(model="limited", input="Hello") as stream:
        list(stream)  # failed before any event: a status, not a failed stream


@pytest.mark.parametrize("route", ["midstream", "cut"])
def test_mid_stream_failure_raises_during_the_stream(client: openai.OpenAI, stack: Services, route: str) -> None:
    deltas: list[str] = []
    kinds: list[str] = []
    with pytest.raises(openai.APIError), client.responses.stream(model=route, input="Hello") as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    partial = "".join(deltas)
    assert partial  # some text came first
    assert stack.fakes[route].answer.startswith(partial) and partial != stack.fakes[route].answer
    assert "response.completed" not in kinds


def test_a_stream_broken_mid_answer_is_continued_and_stored_whole(client: openai.OpenAI, stack: Services) -> None:
    """``mid_stream = "continue"``: the backup continues from the text delivered; the response, and
    the conversation a later turn continues, hold the one seamless answer."""
    with client.responses.stream(model="resilient", input="Hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    prefill = stack.plain.bodies[-1]["messages"][-1]
    assert prefill["role"] == "assistant" and prefill["content"]
    assert stack.fakes["midstream"].answer.startswith(prefill["content"])
    assert "".join(deltas) == final.output_text == prefill["content"] + stack.plain.continuation
    assert final.status == "completed"
    client.responses.create(model="small", input="next", previous_response_id=final.id)
    assert text_of(stack.plain.bodies[-1]["messages"][1]["content"]) == final.output_text


def test_a_tool_call_cut_mid_stream_raises_and_is_not_restarted(client: openai.OpenAI, stack: Services) -> None:
    flaky = stack.fakes["flaky"]
    calls = flaky.chat_count
    kinds: list[str] = []
    with pytest.raises(openai.APIError), \
            client.responses.stream(model="flaky", input="Weather in Paris?", tools=TOOLS) as stream:
        for event in stream:
            kinds.append(event.type)
    assert "response.function_call_arguments.delta" in kinds
    assert "response.completed" not in kinds and "response.function_call_arguments.done" not in kinds
    assert flaky.chat_count == calls + 1  # a call half delivered is never started again


def test_leaving_a_stream_cancels_the_upstream_request(client: openai.OpenAI, stack: Services) -> None:
    stall = stack.fakes["stall"]  # half the answer, then 30 s of silence (the gateway's idle limit is 10 s)
    left = stall.disconnects
    with client.responses.stream(model="stall", input="Hello") as stream:
        first = next(event for event in stream if event.type == "response.output_text.delta")
    assert first.delta and stall.answer.startswith(first.delta)
    stack.background.run(stall.wait_until(lambda: stall.disconnects == left + 1 and stall.open_streams == 0,
                                          timeout=5))


def test_a_whole_answer_cut_short_is_502(client: openai.OpenAI) -> None:
    """Not streamed, a failure halfway is an error status: no partial Response passes for a whole one."""
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model="cut", input="Hello")
    assert info.value.status_code == 502


def test_a_failed_stream_is_not_stored(client: openai.OpenAI, stack: Services) -> None:
    """The failure events name the response; it was not completed, so it cannot be continued."""
    with httpx.stream("POST", f"{stack.gateway.api_base}/responses", timeout=CLIENT_TIMEOUT,
                      json={"model": "midstream", "input": "Hello", "stream": True},
                      headers={"Authorization": f"Bearer {API_KEY}"}) as raw:
        assert raw.status_code == 200
        events = [json.loads(line[len("data: "):]) for line in raw.iter_lines() if line.startswith("data: ")]
    failed = [e for e in events if e.get("type") == "response.failed"]
    assert len(failed) == 1 and failed[0]["response"]["status"] == "failed"
    assert events[-1]["type"] == "response.failed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed[0]["response"]["id"])


def test_stored_responses_are_shared_by_the_workers(stack: Services, tmp_path: Path) -> None:
    """With ``--workers 2`` each request may reach either process: a response one stored is found by
    the other (the request log's SQLite file holds them). Every request opens a new connection."""
    gateway = GatewayProcess(gateway_config(stack.fakes), tmp_path, env={"PATCHBAY_API_KEYS": API_KEY},
                             args=["--workers", "2"])
    stack.background.run(gateway.__aenter__())
    try:
        assert len(gateway.children()) >= 2
        with openai.OpenAI(base_url=gateway.api_base, api_key=API_KEY, max_retries=0, timeout=CLIENT_TIMEOUT,
                           default_headers={"Connection": "close"}) as sdk:
            previous: str | None = None
            for turn in range(8):
                response = sdk.responses.create(model="small", input=f"turn {turn}", previous_response_id=previous)
                assert sdk.responses.retrieve(response.id).output_text == stack.plain.answer
                previous = response.id
        assert [m["role"] for m in stack.plain.bodies[-1]["messages"]] == ["user", "assistant"] * 7 + ["user"]
    finally:
        stack.background.run(gateway.stop())


# -- limits and the request log --------------------------------------------------------------------------


def test_rate_limits_and_request_log_see_responses(stack: Services, tmp_path: Path) -> None:
    config = gateway_config(stack.fakes, limits={"requests_per_minute": 2})
    gateway = GatewayProcess(config, tmp_path, env={"PATCHBAY_API_KEYS": API_KEY})
    stack.background.run(gateway.__aenter__())
    try:
        with openai.OpenAI(base_url=gateway.api_base, api_key=API_KEY, max_retries=0,
                           timeout=CLIENT_TIMEOUT) as sdk:
            whole = sdk.responses.create(model="small", input="first question")
            with sdk.responses.stream(model="small", input="second question") as stream:
                streamed = stream.get_final_response()
            with pytest.raises(openai.RateLimitError) as info:
                sdk.responses.create(model="small", input="third question")
        assert whole.output_text == streamed.output_text == stack.plain.answer
        assert int(info.value.response.headers["retry-after"]) >= 1
        assert "requests_per_minute" in info.value.message
        metrics = httpx.get(f"{gateway.base_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"},
                            timeout=CLIENT_TIMEOUT).text
        assert 'patchbay_requests_total{provider="plain",model="fake-small",status="200"} 2' in metrics
    finally:
        stack.background.run(gateway.stop())  # writes what the request log still has queued
    records = read_request_log(tmp_path / "home")
    for question in ("first question", "second question"):
        [record] = [r for r in records if question in json.dumps(r["messages"])]
        assert record["response"] == stack.plain.answer
        assert record["status"] == 200
        assert record["requested_model"] == "small"
    assert not any("third question" in json.dumps(r["messages"]) for r in records)  # refused before routing


def read_request_log(home: Path) -> list[dict[str, Any]]:
    """Every exchange in the request log under ``home``, by ``patchbay logs --json``."""
    result = subprocess.run([sys.executable, "-m", "patchbay", "logs", "--json", "-n", "0"],
                            env={"PATCHBAY_HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, timeout=CLI_TIMEOUT, check=True)
    records = json.loads(result.stdout)
    assert isinstance(records, list)
    return records
