"""Fault injection through a real ``patchbay serve``: every upstream fault, streamed and not.

One gateway process serves the whole matrix. Each scenario has its own fault-injecting
:class:`OpenAIFake` (its own port) behind its own route, so a case only ever meets its own fault.
The router's limits are short (1 s to connect and between chunks, 2 s for the first byte, which
leaves the fakes time to make a 17 MB answer on a busy machine; 3 s in all)
and there is one attempt per request, so each case ends by its own fault, not by a retry.

Per case: the client gets the expected status (a failure before any text) or, after some text, an
in-band ``error`` event that ends the stream; the request finishes within the total timeout plus a
generous margin (two shared cores); the text received is never repeated (a prefix of the answer,
or the exact answer); and afterwards the gateway is back to its baseline: open file descriptors
(``/proc/<pid>/fd``), asyncio tasks (``patchbay_asyncio_tasks`` on ``/metrics``), no socket to an
upstream, no response the fakes are still writing. Idle keep-alive connections are legitimate, so
the fakes close theirs after :data:`UPSTREAM_KEEPALIVE` seconds, as real servers do (later).

The matrix runs on each API the gateway speaks (:data:`APIS`): ``/v1/chat/completions``,
``/v1/messages`` (Anthropic's envelope ``{"type": "error", "error": {...}}`` and its stream events,
an in-band ``event: error``) and ``/v1/responses`` (OpenAI's envelope; an in-band ``error`` event,
then ``response.failed``). One error table gives all three the same statuses, so the outcomes are
the same (:data:`API_OVERRIDES` would hold a case that differs for a reason); each API's client
below reads its own format into the same :class:`Result`, so one :func:`check` judges them all.

Beyond the matrix: faults after some text on a route whose second target continues the answer
(the client gets the delivered text once, then the rest; on each API); the whole matrix at once
(on each API); a tool call, whole and cut after its first fragment, on each API (its input reaches
the client once); and a client that leaves in the middle of a fault (the upstream request is closed).

Decisions the matrix pins down: invalid UTF-8 from an upstream reaches the client as U+FFFD
(lenient, as the decoders document); one SSE event larger than the decoders' line limit
(1 MiB) is a 502 protocol error naming ``max_line_size``, while a whole (non-streamed) answer of
several MB passes; an endless stream ends at the router's total timeout; a whole answer labelled
``text/plain`` is accepted, a stream labelled ``application/json`` is a 502 protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.replicas.base import DEFAULT_ANSWER, corrupt_utf8, refused_url
from tests.replicas.openai_fake import OpenAIFake, endless_text
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

ROUTER = {"retries": 1, "connect_timeout": 1.0, "first_byte_timeout": 2.0, "idle_timeout": 1.0, "timeout": 3.0}
DEADLINE = ROUTER["timeout"]
#: Added to the total timeout for the bound on each request: generous, the machine is shared and slow.
MARGIN = 10.0
#: The client's own limit: past it the request counts as hung.
CLIENT_TIMEOUT = DEADLINE + MARGIN + 5.0
#: Seconds the fakes keep an idle keep-alive connection (so the pool's idle sockets go away).
UPSTREAM_KEEPALIVE = 0.3
#: Bound on waiting for the gateway to return to its baseline after a case.
SETTLE_TIMEOUT = 15.0
#: Seconds between the endless stream's deltas (paced, so it does not eat the shared cores).
ENDLESS_INTERVAL = 0.005
#: What a log line of a gateway that handled every fault cleanly never contains.
LOG_COMPLAINTS = ("Traceback", " ERROR ", "ERROR:", "never retrieved", "destroyed but it is pending", "Unclosed")
HELLO = [{"role": "user", "content": "Hello"}]


@dataclass(frozen=True)
class Outcome:
    """What the client must see: ``status`` (200 also for an in-band error), and either the exact
    ``text`` of an answer or an error whose message names ``cause``; ``partial`` marks an in-band
    error after some text."""

    status: int
    cause: str = ""
    text: str | None = None
    partial: bool = False


def ok(text: str) -> Outcome:
    return Outcome(200, text=text)


def fails(status: int, cause: str) -> Outcome:
    return Outcome(status, cause)


def in_band(cause: str) -> Outcome:
    return Outcome(200, cause, partial=True)


ANSWER = DEFAULT_ANSWER
#: Cases whose fake runs another scenario than the case's name, and the ``enormous`` sizes: over
#: the 1 MiB line limit and under the 16 MiB limit of a whole answer, then over both.
CASE_SCENARIO = {"enormous_over_limit": "enormous"}
ENORMOUS_SIZE = {"enormous": 3 * 1024 * 1024, "enormous_over_limit": 17 * 1024 * 1024}


def make_fake(case: str) -> OpenAIFake:
    """The (not yet started) fake behind ``case``."""
    fake = OpenAIFake(CASE_SCENARIO.get(case, case))
    fake.enormous_size = ENORMOUS_SIZE.get(case, fake.enormous_size)
    fake.keepalive_timeout = UPSTREAM_KEEPALIVE
    fake.endless_interval = ENDLESS_INTERVAL
    fake.first_byte_delay = 2 * ROUTER["first_byte_timeout"]
    return fake


#: case -> (streamed, whole). "refused" has no fake: its route points at a closed port.
MATRIX: dict[str, tuple[Outcome, Outcome]] = {
    "normal": (ok(ANSWER), ok(ANSWER)),
    "refused": (fails(502, "ConnectionFailed"), fails(502, "ConnectionFailed")),
    "reset_before_headers": (fails(502, "ConnectionFailed"), fails(502, "ConnectionFailed")),
    "status_500": (fails(502, "UpstreamError (502)"), fails(502, "UpstreamError (502)")),
    "status_502": (fails(502, "UpstreamError (502)"), fails(502, "UpstreamError (502)")),
    "status_503": (fails(502, "UpstreamError (502)"), fails(502, "UpstreamError (502)")),
    "status_429": (fails(429, "RateLimited"), fails(429, "RateLimited")),
    "slow_first_byte": (fails(504, "FirstByteTimeout"), fails(504, "FirstByteTimeout")),
    "stall": (in_band("stalled"), fails(504, "IdleTimeout")),
    "disconnect": (in_band("connection"), fails(502, "ConnectionFailed")),
    "truncated_chunked": (in_band("connection"), fails(502, "ConnectionFailed")),
    "malformed_stream": (in_band("not valid JSON"), fails(502, "ProtocolError")),
    "invalid_utf8": (ok(corrupt_utf8(ANSWER.encode()).decode("utf-8", "replace")),) * 2,
    "enormous": (fails(502, "max_line_size"), ok(make_fake("enormous").enormous_text())),
    "enormous_over_limit": (fails(502, "max_line_size"), fails(502, "larger than 16777216 bytes")),
    "endless": (in_band("deadline"), fails(504, "deadline")),
    "wrong_content_type": (fails(502, "ProtocolError"), ok(ANSWER)),
    "html_200": (fails(502, "HTML"), fails(502, "HTML")),
}

#: The APIs the matrix runs on: ``/v1/chat/completions``, ``/v1/messages``, ``/v1/responses``.
APIS = ("chat", "messages", "responses")
#: (api, case) -> (streamed, whole) where an API's outcome differs from :data:`MATRIX`'s, with the
#: reason next to each row. Empty: one error table gives every API the same statuses.
API_OVERRIDES: dict[tuple[str, str], tuple[Outcome, Outcome]] = {}


def outcome(api: str, scenario: str, stream: bool) -> Outcome:
    """What ``scenario`` must give on ``api``, streamed or whole."""
    return API_OVERRIDES.get((api, scenario), MATRIX[scenario])[0 if stream else 1]


#: Tool calls, with the tool of :data:`TOOL_FIELDS` (the answer is a call, no text): a whole call,
#: and one whose stream breaks after its first arguments fragment (a whole answer: cut mid-object).
TOOL_MATRIX: dict[str, tuple[Outcome, Outcome]] = {
    "tool_call": (ok(""), ok("")),
    "tool_call_then_fail": (in_band("connection"), fails(502, "ProtocolError")),
}

#: Faults after some text, on a route whose second target continues the answer (assistant prefill,
#: ``mid_stream = "continue"``): the client gets the delivered text once, then the continuation.
CONTINUED = ["disconnect", "stall", "truncated_chunked", "malformed_stream", "mid_stream_error"]
CONTINUATION = OpenAIFake().continuation


@dataclass
class Snapshot:
    """What the gateway holds when idle."""

    fds: int
    tasks: int
    upstream_sockets: int
    memory: int


class Harness:
    """The gateway, the fakes and the baseline every case must return to."""

    def __init__(self, gateway: GatewayProcess, fakes: dict[str, OpenAIFake]) -> None:
        self.gateway = gateway
        self.fakes = fakes
        self.ports = {int(fake.base_url.rsplit(":", 1)[1]) for fake in fakes.values() if fake.base_url}
        self.baseline = Snapshot(0, 0, 0, 0)

    @property
    def pid(self) -> int:
        assert self.gateway.process is not None
        return self.gateway.process.pid

    async def snapshot(self) -> Snapshot:
        fds = len(list(Path(f"/proc/{self.pid}/fd").iterdir()))
        upstream = upstream_sockets(self.pid, self.ports)
        metrics = await scrape(self.gateway.base_url)
        return Snapshot(fds, int(metrics["patchbay_asyncio_tasks"]), upstream,
                        int(metrics["process_resident_memory_bytes"]))

    def quiet(self, now: Snapshot) -> bool:
        streams = sum(fake.open_streams for fake in self.fakes.values())
        return (now.fds <= self.baseline.fds and now.tasks <= self.baseline.tasks and now.upstream_sockets == 0
                and streams == 0)

    async def settle(self) -> Snapshot:
        """Wait (bounded) until the gateway is back to the baseline; fail naming what is left over."""
        now = await self.snapshot()
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT):
                while not self.quiet(now):
                    await asyncio.sleep(0.05)  # the next look; the condition, not the sleep, decides
                    now = await self.snapshot()
        except TimeoutError:
            streams = {name: fake.open_streams for name, fake in self.fakes.items() if fake.open_streams}
            pytest.fail(f"the gateway did not return to its baseline {self.baseline}: now {now}, "
                        f"upstream responses still open: {streams}\n{self.gateway.log_text[-3000:]}")
        return now


def upstream_sockets(pid: int, ports: set[int]) -> int:
    """The process's TCP sockets whose remote end is one of ``ports`` (any state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[9] in inodes and remote_port in ports:
                count += 1
    return count


async def scrape(base_url: str) -> dict[str, float]:
    """The unlabelled samples of ``/metrics`` (a fresh connection, closed after)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.get(f"{base_url}/metrics") as response:
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            samples[name] = float(value)
    return samples


def config_for(fakes: dict[str, OpenAIFake], refused: str) -> dict[str, Any]:
    """Route ``<case>``: the case's fake alone; route ``continue-<case>``: the case's fake, then
    the normal one, both able to continue a prefilled answer (under other provider names, so
    their health is their own)."""
    providers: dict[str, dict[str, Any]] = {f"p_{name}": {"base_url": fake.api_base, "models": ["m"]}
                                            for name, fake in fakes.items()}
    providers["p_refused"] = {"base_url": f"{refused}/v1", "models": ["m"]}
    for name in [*CONTINUED, "normal"]:
        providers[f"c_{name}"] = {"base_url": fakes[name].api_base, "models": ["m"], "prefill": True}
    routes = {name: [f"p_{name}/m"] for name in [*MATRIX, *TOOL_MATRIX]}
    routes.update({f"continue-{name}": [f"c_{name}/m", "c_normal/m"] for name in CONTINUED})
    return {
        "server": {"keepalive_interval": 30.0},  # no keep-alive comment starts a response before an error
        "router": {**ROUTER, "mid_stream": "continue"},
        "providers": providers,
        "routes": routes,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def harness(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    fakes: dict[str, OpenAIFake] = {}
    for name in dict.fromkeys([*MATRIX, *CONTINUED, *TOOL_MATRIX]):
        if name != "refused":
            fakes[name] = fake = make_fake(name)
            await fake.start()
    try:
        config = config_for(fakes, refused_url())
        async with GatewayProcess(config, tmp_path_factory.mktemp("faults")) as gateway:
            harness = Harness(gateway, fakes)
            # Warm up (imports, the pool, the request log), then take the baseline once all is idle.
            for api in APIS:
                for stream in (False, True):
                    await request(gateway, "normal", stream, api)
            harness.baseline = Snapshot(10**6, 10**6, 0, 0)
            harness.baseline = await harness.settle()
            yield harness
        # Stopped: whatever asyncio or uvicorn had to complain about (at shutdown too) is in the log.
        complaints = [line for line in gateway.log if any(mark in line for mark in LOG_COMPLAINTS)]
        assert not complaints, "".join(complaints)
    finally:
        for fake in fakes.values():
            await fake.stop()


@dataclass
class Call:
    """A tool call as the client got it: its name and its input's fragments, in order."""

    name: str
    fragments: list[str] = field(default_factory=list)


@dataclass
class Result:
    status: int
    text: str
    error: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)
    events_after_error: int = 0
    done: bool = False
    calls: list[Call] = field(default_factory=list)


class Calls:
    """The tool calls of a stream, by the stream's own index for each: a call that starts again
    shows as a second :class:`Call`."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.by_index: dict[int, Call] = {}

    def start(self, index: int, name: str) -> None:
        self.by_index[index] = call = Call(name)
        self.result.calls.append(call)

    def add(self, index: int, fragment: str) -> None:
        if index not in self.by_index:
            self.start(index, "")
        if fragment:
            self.by_index[index].fragments.append(fragment)


#: The tool of the tool-call cases, in each API's request fields (a call is required).
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                      "required": ["city"]}
TOOL_FIELDS: dict[str, dict[str, Any]] = {
    "chat": {"tools": [{"type": "function", "function": {"name": "get_weather", "description": "The weather.",
                                                          "parameters": WEATHER_PARAMETERS}}],
             "tool_choice": "required"},
    "messages": {"tools": [{"name": "get_weather", "description": "The weather.",
                            "input_schema": WEATHER_PARAMETERS}], "tool_choice": {"type": "any"}},
    "responses": {"tools": [{"type": "function", "name": "get_weather", "description": "The weather.",
                             "parameters": WEATHER_PARAMETERS}], "tool_choice": "required"},
}


async def request(gateway: GatewayProcess, model: str, stream: bool, api: str = "chat", *,
                  tools: bool = False) -> Result:
    """One request for ``model`` on ``api`` (see :data:`APIS`), read into a :class:`Result`;
    ``tools``: with the tool of :data:`TOOL_FIELDS`, which must be called."""
    whole, streamed = REQUESTS[api]
    return await (streamed if stream else whole)(gateway, model, tools)


async def whole_request(gateway: GatewayProcess, model: str, tools: bool = False) -> Result:
    """A non-streamed request through the openai SDK."""
    fields = TOOL_FIELDS["chat"] if tools else {}
    async with openai.AsyncOpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0,
                                  timeout=CLIENT_TIMEOUT) as sdk:
        try:
            answer = await sdk.chat.completions.create(model=model, messages=HELLO, **fields)  # type: ignore[arg-type]
        except openai.APIStatusError as error:
            body = error.body if isinstance(error.body, dict) else {}
            return Result(error.status_code, "", body.get("error", body) or {"message": error.message},
                          {k.lower(): v for k, v in error.response.headers.items()})
    message = answer.choices[0].message
    calls = [Call(call.function.name, [call.function.arguments]) for call in message.tool_calls or []
             if call.type == "function"]
    return Result(200, message.content or "", None, done=True, calls=calls)


async def stream_request(gateway: GatewayProcess, model: str, tools: bool = False) -> Result:
    """A streamed request, raw: the SDK would hide what follows an error event."""
    body = {"model": model, "messages": HELLO, "stream": True, **(TOOL_FIELDS["chat"] if tools else {})}
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            http.post(f"{gateway.api_base}/chat/completions", json=body) as response:
        raw = await response.read()
    if response.status != 200:
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Result(response.status, "", json.loads(raw)["error"], headers)
    assert response.content_type == "text/event-stream"
    result = Result(200, "", None)
    calls = Calls(result)
    for block in raw.decode().split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if not data:
            continue
        if result.error is not None or result.done:
            result.events_after_error += 1
        elif data[0] == "[DONE]":
            result.done = True
        else:
            payload = json.loads("\n".join(data))
            if "error" in payload:
                result.error = payload["error"]
            else:
                result.text += "".join(choice["delta"].get("content") or "" for choice in payload["choices"])
                for choice in payload["choices"]:
                    for delta in choice["delta"].get("tool_calls") or []:
                        function = delta.get("function") or {}
                        if delta.get("id") or function.get("name"):
                            calls.start(delta["index"], function.get("name") or "")
                        calls.add(delta["index"], function.get("arguments") or "")
    return result


async def post(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> tuple[aiohttp.ClientResponse, bytes]:
    """A raw POST to ``/v1<path>``: the response (closed) and its whole body."""
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            http.post(f"{gateway.api_base}{path}", json=body) as response:
        raw = await response.read()
    return response, raw


def lower_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items()}


def sse_events(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """The named server-sent events of a stream: (``event:`` name or None, the JSON of its data)."""
    events = []
    for block in raw.decode().split("\n\n"):
        name: str | None = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


#: Anthropic's ``error.type`` for the statuses of the matrix (https://docs.claude.com/en/api/errors).
ANTHROPIC_ERROR_TYPES = {429: "rate_limit_error", 502: "api_error", 504: "timeout_error"}
#: The event names of an Anthropic Messages stream (an ``error`` only after a failure).
MESSAGE_EVENTS = frozenset({"message_start", "content_block_start", "ping", "content_block_delta",
                            "content_block_stop", "message_delta", "message_stop", "error"})


def anthropic_failure(response: aiohttp.ClientResponse, raw: bytes) -> Result:
    """An error response of ``/v1/messages``: Anthropic's envelope, typed by its status."""
    body = json.loads(raw)
    assert body["type"] == "error", body
    error = body["error"]
    assert error["type"] == ANTHROPIC_ERROR_TYPES.get(response.status, error["type"]), (response.status, error)
    return Result(response.status, "", error, lower_headers(response))


def messages_body(model: str, tools: bool, **more: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 256, "messages": HELLO, **(TOOL_FIELDS["messages"] if tools else {}),
            **more}


async def messages_whole(gateway: GatewayProcess, model: str, tools: bool = False) -> Result:
    """A whole answer of ``/v1/messages``: the text of its text blocks, its ``tool_use`` blocks."""
    response, raw = await post(gateway, "/messages", messages_body(model, tools))
    if response.status != 200:
        return anthropic_failure(response, raw)
    message = json.loads(raw)
    assert message["type"] == "message" and message["role"] == "assistant", message
    text = "".join(block["text"] for block in message["content"] if block["type"] == "text")
    calls = [Call(block["name"], [json.dumps(block["input"])]) for block in message["content"]
             if block["type"] == "tool_use"]
    return Result(200, text, None, done=True, calls=calls)


async def messages_stream(gateway: GatewayProcess, model: str, tools: bool = False) -> Result:
    """A streamed answer of ``/v1/messages``: the text deltas, the ``tool_use`` blocks and their
    input deltas; ``message_stop`` ends it, an ``error`` event ends it failed."""
    body = messages_body(model, tools, stream=True)
    response, raw = await post(gateway, "/messages", body)
    if response.status != 200:
        return anthropic_failure(response, raw)
    assert response.content_type == "text/event-stream"
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names and names[0] == "message_start", names
    assert set(names) <= MESSAGE_EVENTS, names
    result = Result(200, "", None)
    calls = Calls(result)
    for name, payload in events:
        assert payload["type"] == name, (name, payload)
        if result.error is not None or result.done:
            result.events_after_error += 1
        elif name == "error":
            result.error = payload["error"]
            assert result.error["type"] in ("api_error", "timeout_error", "overloaded_error"), result.error
        elif name == "message_stop":
            result.done = True
        elif name == "content_block_start" and payload["content_block"]["type"] == "tool_use":
            calls.start(payload["index"], payload["content_block"]["name"])
        elif name == "content_block_delta" and payload["delta"]["type"] == "text_delta":
            result.text += payload["delta"]["text"]
        elif name == "content_block_delta" and payload["delta"]["type"] == "input_json_delta":
            calls.add(payload["index"], payload["delta"]["partial_json"])
    return result


#: The event types of an OpenAI Responses stream of text.
RESPONSE_EVENTS = frozenset({
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.output_item.done", "response.function_call_arguments.delta", "response.function_call_arguments.done",
    "response.completed", "response.incomplete", "response.failed", "error"})


def output_text(response: dict[str, Any]) -> str:
    """The text of a Response: its message items' ``output_text`` parts."""
    return "".join(part["text"] for item in response["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def function_calls(response: dict[str, Any]) -> list[Call]:
    """The ``function_call`` items of a Response."""
    return [Call(item["name"], [item["arguments"]]) for item in response["output"] if item["type"] == "function_call"]


def responses_body(model: str, tools: bool, **more: Any) -> dict[str, Any]:
    return {"model": model, "input": "Hello", **(TOOL_FIELDS["responses"] if tools else {}), **more}


async def responses_whole(gateway: GatewayProcess, model: str, tools: bool = False) -> Result:
    """A whole answer of ``/v1/responses``: the Response's output text and function calls; errors
    in OpenAI's envelope."""
    response, raw = await post(gateway, "/responses", responses_body(model, tools))
    body = json.loads(raw)
    if response.status != 200:
        return Result(response.status, "", body["error"], lower_headers(response))
    assert body["object"] == "response" and body["status"] in ("completed", "incomplete"), body
    return Result(200, output_text(body), None, done=True, calls=function_calls(body))


async def responses_stream(gateway: GatewayProcess, model: str, tools: bool = False) -> Result:
    """A streamed answer of ``/v1/responses``: the text deltas and the function calls' argument
    deltas; ``response.completed`` (or ``.incomplete``) ends it; an ``error`` event ends it failed,
    with the ``response.failed`` that belongs to it (anything after that counts as an event after
    the error)."""
    response, raw = await post(gateway, "/responses", responses_body(model, tools, stream=True))
    if response.status != 200:
        return Result(response.status, "", json.loads(raw)["error"], lower_headers(response))
    assert response.content_type == "text/event-stream"
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names and names[0] == "response.created", names
    assert set(names) <= RESPONSE_EVENTS, names
    numbers = [payload["sequence_number"] for _, payload in events]
    assert all(a < b for a, b in itertools.pairwise(numbers)), numbers
    result = Result(200, "", None)
    calls = Calls(result)
    failing = False  # an error event came: its response.failed is next
    for name, payload in events:
        assert payload["type"] == name, (name, payload)
        if failing and name == "response.failed":
            failing = False
            assert payload["response"]["status"] == "failed", payload
            assert result.error is not None and payload["response"]["error"]["message"] == result.error["message"]
        elif result.error is not None or result.done:
            result.events_after_error += 1
        elif name == "error":
            result.error, failing = payload.get("error") or payload, True
        elif name in ("response.completed", "response.incomplete"):
            result.done = True
            final = payload["response"]  # the final Response says the same as the deltas
            assert output_text(final) == result.text, final
            assert [(c.name, c.fragments) for c in function_calls(final)] == [
                (c.name, ["".join(c.fragments)]) for c in result.calls], final
        elif name == "response.output_text.delta":
            result.text += payload["delta"]
        elif name == "response.output_item.added" and payload["item"]["type"] == "function_call":
            calls.start(payload["output_index"], payload["item"]["name"])
        elif name == "response.function_call_arguments.delta":
            calls.add(payload["output_index"], payload["delta"])
    assert not failing, "an error event without the response.failed that ends the Response"
    return result


#: api -> (whole, streamed) request functions.
REQUESTS = {
    "chat": (whole_request, stream_request),
    "messages": (messages_whole, messages_stream),
    "responses": (responses_whole, responses_stream),
}

CASES = [pytest.param(name, stream, api, id=f"{name}-{'stream' if stream else 'whole'}-{api}")
         for api in APIS for name in MATRIX for stream in (True, False)]


@pytest.mark.parametrize(("scenario", "stream", "api"), CASES)
async def test_fault(harness: Harness, scenario: str, stream: bool, api: str) -> None:
    expected = outcome(api, scenario, stream)
    started = time.monotonic()
    result = await request(harness.gateway, scenario, stream, api)
    elapsed = time.monotonic() - started

    assert elapsed < DEADLINE + MARGIN, f"took {elapsed:.1f} s"
    check(scenario, expected, result)
    await harness.settle()


def check(scenario: str, expected: Outcome, result: Result) -> None:
    assert result.status == expected.status, result
    assert result.events_after_error == 0, "the stream went on after its end or its error event"
    if expected.status == 429:
        assert result.headers.get("retry-after") == "1"  # the upstream's, passed on
    if expected.text is not None:
        assert result.error is None and result.done
        assert result.text == expected.text  # whole, once: nothing lost, nothing repeated
    else:
        assert result.error is not None and not result.done
        message = result.error.get("message", "")
        assert expected.cause.lower() in message.lower(), message
        assert "Traceback" not in message
        assert message.count("interrupted after") <= 1, message  # the reason said once
        if "deadline" in message:
            assert f"deadline of {DEADLINE:g} s" in message, message  # not "of 2.9999719 s"
        if expected.partial:
            assert result.text, "an in-band error came before any text (a status would have been right)"
            answer = endless_text(result.text.count(" ")) if scenario == "endless" else ANSWER
            assert answer.startswith(result.text), "the partial text is not a prefix of the answer"
        else:
            assert result.text == ""


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("scenario", CONTINUED)
async def test_fault_after_text_is_continued_without_repeating(harness: Harness, scenario: str, stream: bool,
                                                               api: str) -> None:
    continuer = harness.fakes["normal"]
    prefills = len(continuer.prefills)
    result = await request(harness.gateway, f"continue-{scenario}", stream, api)
    assert result.status == 200 and result.error is None and result.done, result
    if stream:  # some text came before the fault: the second target continues exactly that
        delivered = result.text.removesuffix(CONTINUATION)
        assert delivered and delivered != result.text and ANSWER.startswith(delivered), result.text
        assert continuer.prefills[prefills:] == [delivered]
    else:  # nothing reached the client before the fault: the second target answers from scratch
        assert result.text == ANSWER
        assert continuer.prefills[prefills:] == []
    await harness.settle()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("scenario", TOOL_MATRIX)
async def test_tool_call_fault_never_repeats_the_input(harness: Harness, scenario: str, stream: bool,
                                                       api: str) -> None:
    """A tool call reaches the client once, whole; one cut after its first fragment is that
    fragment once, then the error (or, before anything was sent, the status)."""
    fake = harness.fakes[scenario]
    expected = TOOL_MATRIX[scenario][0 if stream else 1]
    result = await request(harness.gateway, scenario, stream, api, tools=True)
    assert result.status == expected.status and result.text == "", result
    assert result.events_after_error == 0, "the stream went on after its end or its error event"
    if expected.text is not None:
        assert result.error is None and result.done, result
        assert [(call.name, json.loads("".join(call.fragments))) for call in result.calls] == [
            ("get_weather", fake.tool_arguments)], result.calls
    else:
        assert result.error is not None and not result.done, result
        assert expected.cause.lower() in result.error.get("message", "").lower(), result.error
        if expected.partial:  # what the client got, once
            assert [(call.name, "".join(call.fragments)) for call in result.calls] == [
                ("get_weather", fake.tool_call_fragments()[0])], result.calls
        else:
            assert result.calls == [], result.calls
    await harness.settle()


@pytest.mark.parametrize("api", APIS)
async def test_every_fault_at_once(harness: Harness, api: str) -> None:
    """The whole matrix concurrently (on one API at a time): no case disturbs another, and all is
    released after.

    Not the enormous answers: making them keeps the fakes' event loop (this process's) busy for
    long enough that the others' first bytes can run past their limit."""
    cases = [(name, stream) for name in MATRIX if not name.startswith("enormous") for stream in (True, False)]
    started = time.monotonic()
    results = await asyncio.gather(*(request(harness.gateway, name, stream, api) for name, stream in cases))
    elapsed = time.monotonic() - started
    assert elapsed < DEADLINE + MARGIN, f"took {elapsed:.1f} s"
    for (name, stream), result in zip(cases, results, strict=True):
        check(name, outcome(api, name, stream), result)
    await harness.settle()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("scenario", ["slow_first_byte", "stall", "endless"])
async def test_client_leaving_during_a_fault_closes_the_upstream(harness: Harness, scenario: str,
                                                                 stream: bool) -> None:
    fake = harness.fakes[scenario]
    disconnects = fake.disconnects
    leaving = asyncio.ensure_future(stream_request(harness.gateway, scenario) if stream
                                    else whole_request(harness.gateway, scenario))
    await fake.wait_until(lambda: fake.open_streams == 1, timeout=CLIENT_TIMEOUT)  # the fault is under way
    leaving.cancel()  # the client goes
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    # The gateway noticed and closed the upstream request.
    await fake.wait_until(lambda: fake.disconnects == disconnects + 1, timeout=SETTLE_TIMEOUT)
    await harness.settle()


async def test_metrics_have_process_gauges(harness: Harness) -> None:
    samples = await scrape(harness.gateway.base_url)
    assert samples["process_open_fds"] > 0
    assert samples["process_resident_memory_bytes"] > 10 * 1024 * 1024
    assert samples["patchbay_asyncio_tasks"] >= 1


async def test_gateway_is_back_to_baseline_after_the_matrix(harness: Harness) -> None:
    now = await harness.settle()
    assert now.memory < harness.baseline.memory + 512 * 1024 * 1024  # no runaway buffering
