"""Nothing reaches a client twice, text or tool call.

A property test plays scripted targets that yield any interleaving of text and tool-call
fragments and fail anywhere, over routes that mix prefill and plain targets, and checks what the
outermost stream handed over: every fragment exactly once and from one attempt, a started tool
call never continued or restarted (the stream ends with StreamInterrupted), text continued only
by a prefill target that got exactly the delivered text, and the whole answer assembled from the
events equal to the one the chunks spell. Explicit cases pin the tool-call paths: no retry on the
same target, no fallback (even to a prefill target, even through a nested router), and no API
key rotation in OpenAICompatible once a fragment went out.

Deterministic: ``derandomize`` and no example database, so every run checks the same examples.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from patchbay.chat.request import ChatCompletionRequest
from patchbay.chat.response import ChatCompletion, ChatCompletionChunk, complete, stream_chunks
from patchbay.errors import (
    AuthError,
    ConnectionFailed,
    PatchbayError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
)
from patchbay.events import EventStream, Fallback, Finish, StreamEvent, TextDelta, ToolCallDelta
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import RetryPolicy, Router, Target
from patchbay.timeouts import Timeout
from tests.replicas.base import sse
from tests.replicas.openai_fake import OpenAIFake, error_object

HELLO = [{"role": "user", "content": "hi"}]
FAST = Timeout(connect=2, first_byte=2, idle=2, total=20)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
EXACT = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])

Fragment = TextDelta | ToolCallDelta
ERRORS = ("upstream", "connection", "rate_limited")
#: Every fragment carries its attempt's tag ("T1.0": target 1, its first call) and its position.
TAGGED = re.compile(r"<(?P<tag>T\d\.\d)#(?P<k>\d+)>")


def make_error(kind: str) -> PatchbayError:
    """A fresh error of ``kind`` (errors are mutable: the base class adds context to them)."""
    if kind == "upstream":
        return UpstreamError("upstream answered 500")
    if kind == "connection":
        return ConnectionFailed("connection reset")
    return RateLimited("slow down", retry_after=0.0)


@dataclass(frozen=True)
class Plan:
    """What one call of a scripted target yields, and how it ends (an error kind, or None: done)."""

    fragments: tuple[Fragment, ...]
    error: str | None

    @property
    def calls_tools(self) -> bool:
        return any(isinstance(f, ToolCallDelta) for f in self.fragments)


@dataclass(frozen=True)
class Seen:
    """One call of a scripted target, with what the request's transcript said when it began."""

    target: str
    number: int
    messages: list[dict[str, Any]]
    visible: int
    text: str
    only_text: bool


class Scripted(AsyncGeneratorProvider):
    """A target that plays ``plans`` (one per call) and notes each call in the shared ``log``."""

    models: ClassVar[list[str]] = ["m"]
    plans: ClassVar[list[Plan]] = []
    log: ClassVar[list[Seen]] = []
    calls: ClassVar[int] = 0

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        number = cls.calls
        cls.calls += 1
        transcript = call.transcript
        cls.log.append(Seen(cls.name, number, request.message_dicts(), transcript.visible, transcript.text,
                            transcript.only_text))
        plan = cls.plans[number]
        for fragment in plan.fragments:
            yield fragment
            await asyncio.sleep(0)
        if plan.error is not None:
            raise make_error(plan.error)
        yield Finish("tool_calls" if plan.calls_tools else "stop")


def scripted(name: str, plans: Sequence[Plan], *, prefill: bool, log: list[Seen]) -> type[Scripted]:
    return type(name, (Scripted,), {"name": name, "plans": list(plans), "log": log, "calls": 0,
                                    "supports_prefill": prefill})


async def no_sleep(seconds: float) -> None:
    """The router's backoff, without the wait."""


def tag_of(fragment: Fragment) -> str:
    found = TAGGED.search(fragment.text if isinstance(fragment, TextDelta) else fragment.arguments)
    assert found is not None, f"an event no script yielded reached the client: {fragment!r}"
    return found["tag"]


# -- the property ------------------------------------------------------------------------------------


@st.composite
def plans(draw: st.DrawFn, target: int, number: int) -> Plan:
    """One call's fragments: text alone, text and fragments of tool calls 0..2 in any order (id and
    name on a call's first fragment), or nothing; then an error or the end."""
    tag = f"T{target}.{number}"
    shape = draw(st.sampled_from(["text", "mixed", "nothing"]))  # text alone is what a prefill can continue
    kinds: list[str | int] = []
    if shape == "text":
        kinds = ["text"] * draw(st.integers(min_value=1, max_value=3))
    elif shape == "mixed":
        kinds = draw(st.lists(st.just("text") | st.sampled_from([0, 1, 2]), min_size=1, max_size=5))
    started: set[int] = set()
    fragments: list[Fragment] = []
    for k, kind in enumerate(kinds):
        if kind == "text":
            fragments.append(TextDelta(f"<{tag}#{k}>"))
        else:
            assert isinstance(kind, int)
            first = kind not in started
            started.add(kind)
            fragments.append(ToolCallDelta(kind, id=f"call_{tag}_{kind}" if first else None,
                                           name=f"fn{kind}" if first else None, arguments=f"<{tag}#{k}>"))
    error = draw(st.sampled_from([*ERRORS, None]))  # mostly a failure: the paths under test
    return Plan(tuple(fragments), error)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[bool, list[Plan]]], str, int]:
    """Routes of 1-3 targets (prefill or not, a plan for each call they may get), mid_stream, retries."""
    attempts = draw(st.sampled_from([1, 2, 3]))
    count = draw(st.sampled_from([3, 2, 1]))  # listed first: what hypothesis draws most
    targets = [(draw(st.sampled_from([True, False])), [draw(plans(i, n)) for n in range(attempts)])
               for i in range(count)]
    return targets, draw(st.sampled_from(["continue", "error"])), attempts


@dataclass
class Outcome:
    events: list[StreamEvent]
    error: PatchbayError | None
    log: list[Seen]
    providers: dict[str, type[Scripted]] = field(default_factory=dict)


async def play(targets: list[tuple[bool, list[Plan]]], mid_stream: str, attempts: int) -> Outcome:
    log: list[Seen] = []
    providers = {f"T{i}": scripted(f"T{i}", plan_list, prefill=prefill, log=log)
                 for i, (prefill, plan_list) in enumerate(targets)}
    router = Router.configure({"m": [Target(p) for p in providers.values()]}, mid_stream=mid_stream,  # type: ignore[arg-type]
                              retry=RetryPolicy(attempts=attempts), seed=0)
    router.sleep = no_sleep  # type: ignore[assignment]
    stream = router.stream("m", HELLO)
    events: list[StreamEvent] = []
    error: PatchbayError | None = None
    try:
        async for event in stream:
            events.append(event)
    except PatchbayError as exc:
        error = exc
    return Outcome(events, error, log, providers)


def segments(visible: list[Fragment]) -> list[tuple[str, list[Fragment]]]:
    """The delivered fragments grouped into runs of one attempt each."""
    runs: list[tuple[str, list[Fragment]]] = []
    for fragment in visible:
        tag = tag_of(fragment)
        if runs and runs[-1][0] == tag:
            runs[-1][1].append(fragment)
        else:
            runs.append((tag, [fragment]))
    return runs


def merged_calls(deltas: Sequence[ToolCallDelta | dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call fragments (events or chunk dicts) joined by index, as a client SDK joins them."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        if isinstance(delta, ToolCallDelta):
            index, call_id, name, arguments = delta.index, delta.id, delta.name, delta.arguments
        else:
            function = delta.get("function") or {}
            index, call_id, name, arguments = (delta["index"], delta.get("id"), function.get("name"),
                                               function.get("arguments", ""))
        call = calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if call_id:
            call["id"] = call_id
        if name:
            call["function"]["name"] += name
        call["function"]["arguments"] += arguments
    return [calls[index] for index in sorted(calls)]


async def replay(events: list[StreamEvent]) -> tuple[ChatCompletion, list[ChatCompletionChunk]]:
    """The whole answer and the chunks, each assembled from a fresh stream of the same events."""

    def source() -> EventStream:
        async def events_again() -> AsyncIterator[StreamEvent]:
            for event in events:
                yield event

        return EventStream(events_again())

    whole = await complete(source(), "m")
    chunks = [chunk async for chunk in stream_chunks(source(), "m")]
    return whole, chunks


def check_answer_shapes(whole: ChatCompletion, chunks: list[ChatCompletionChunk], text: str,
                        tool_deltas: list[ToolCallDelta]) -> None:
    """complete() and stream_chunks() tell the same answer, and it is what the events said."""
    by_choice: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            seen = by_choice.setdefault(choice.index, {"text": "", "calls": [], "finish": None})
            seen["text"] += choice.delta.content or ""
            seen["calls"] += choice.delta.tool_calls or []
            if choice.finish_reason is not None:
                seen["finish"] = choice.finish_reason
    assert [c.index for c in whole.choices] == sorted(by_choice) == [0]
    message, seen = whole.choices[0].message, by_choice[0]
    assert (message.content or "") == seen["text"] == text
    expected_calls = merged_calls(tool_deltas) or None
    assert message.tool_calls == (merged_calls(seen["calls"]) or None) == expected_calls
    assert message.content is not None or (expected_calls and text == "")
    assert whole.choices[0].finish_reason == seen["finish"]
    assert [c["id"] for c in seen["calls"] if "id" in c] == [d.id for d in tool_deltas if d.id is not None]


def text(tag: str, *pieces: int) -> tuple[TextDelta, ...]:
    return tuple(TextDelta(f"<{tag}#{k}>") for k in pieces)


CONTINUED = ([(False, [Plan(text("T0.0", 0, 1), "connection")]), (False, [Plan((), None)]),
              (True, [Plan(text("T2.0", 0), None)])], "continue", 1)
CONTINUED_THEN_TOOLS = ([(True, [Plan(text("T0.0", 0), "upstream"), Plan((), None)]),
                         (True, [Plan((*text("T1.0", 0), ToolCallDelta(0, "call_x", "fn0", "<T1.0#1>")),
                                      "rate_limited"), Plan((), None)]),
                         (True, [Plan(text("T2.0", 0), None), Plan((), None)])], "continue", 2)


@EXACT
@example(CONTINUED)  # text, a failure, a plain target passed over, a prefill target continues
@example(CONTINUED_THEN_TOOLS)  # the continuation starts a tool call and fails: nothing after it
@given(scenarios())
def test_nothing_reaches_the_client_twice(scenario: tuple[list[tuple[bool, list[Plan]]], str, int]) -> None:
    targets, mid_stream, attempts = scenario
    outcome = asyncio.run(play(targets, mid_stream, attempts))
    plan_of = {f"T{i}.{n}": plan for i, (_, plan_list) in enumerate(targets) for n, plan in enumerate(plan_list)}
    prefill_of = {f"T{i}": prefill for i, (prefill, _) in enumerate(targets)}
    events, error, log = outcome.events, outcome.error, outcome.log
    visible = [e for e in events if isinstance(e, TextDelta | ToolCallDelta)]
    client_text = "".join(e.text for e in visible if isinstance(e, TextDelta))
    tool_deltas = [e for e in visible if isinstance(e, ToolCallDelta)]
    runs = segments(visible)

    # Every fragment arrived once, and each attempt's fragments arrived as one run: all it yielded, in order.
    assert len(set(visible)) == len(visible)
    assert len({tag for tag, _ in runs}) == len(runs)
    for tag, run in runs:
        assert tuple(run) == plan_of[tag].fragments

    # Tool-call fragments come from one attempt only, and nothing is delivered after that attempt.
    tool_tags = {tag_of(d) for d in tool_deltas}
    assert len(tool_tags) <= 1
    if tool_deltas:
        assert runs[-1][0] in tool_tags
        first_tool = events.index(tool_deltas[0])
        assert not any(isinstance(e, Fallback) for e in events[first_tool:])

    # Each call began either fresh, or (text only, mode "continue", a prefill target) as a continuation
    # whose trailing assistant message is exactly the text the client had received by then.
    for record in log:
        if record.visible == 0:
            assert record.messages == HELLO
        else:
            assert record.only_text and mid_stream == "continue" and prefill_of[record.target]
            assert record.messages == [*HELLO, {"role": "assistant", "content": record.text}]
    delivered = ""
    for tag, run in runs:
        record = next(r for r in log if f"{r.target}.{r.number}" == tag)
        assert record.text == delivered
        delivered += "".join(f.text for f in run if isinstance(f, TextDelta))
    assert delivered == client_text

    # A Fallback says how much text had reached the client; the client's text never repeats.
    so_far = ""
    for event in events:
        if isinstance(event, TextDelta):
            so_far += event.text
        elif isinstance(event, Fallback):
            assert event.delivered == len(so_far)

    # The stream ends well exactly when the last call did; after output, a failure is StreamInterrupted.
    last = log[-1]
    assert (error is None) == (plan_of[f"{last.target}.{last.number}"].error is None)
    if error is not None:
        if visible:
            assert isinstance(error, StreamInterrupted)
            assert error.partial_text == client_text
        else:
            assert not isinstance(error, StreamInterrupted)
    # Text only, mode "continue": a failure after output is final only when no prefill target was left.
    if isinstance(error, StreamInterrupted) and not tool_deltas and mid_stream == "continue":
        first = int(runs[0][0][1])
        for later in range(first + 1, len(targets)):
            if prefill_of[f"T{later}"]:
                assert any(r.target == f"T{later}" and r.visible > 0 for r in log)

    whole, chunks = asyncio.run(replay(events))
    check_answer_shapes(whole, chunks, client_text, tool_deltas)


# -- the tool-call paths, one by one ----------------------------------------------------------------


class Once(AsyncGeneratorProvider):
    """A target that yields ``fragments`` and then raises ``error`` (a fresh one per call)."""

    models: ClassVar[list[str]] = ["m"]
    fragments: ClassVar[tuple[Fragment, ...]] = ()
    error: ClassVar[type[PatchbayError] | None] = None
    calls: ClassVar[list[list[dict[str, Any]]]] = []

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        cls.calls.append(request.message_dicts())
        for fragment in cls.fragments:
            yield fragment
            await asyncio.sleep(0)
        if cls.error is not None:
            raise cls.error("upstream failed")
        yield TextDelta("a fresh answer")


def once(name: str, *fragments: Fragment, error: type[PatchbayError] | None = None,
         prefill: bool = False) -> type[Once]:
    return type(name, (Once,), {"name": name, "fragments": fragments, "error": error, "calls": [],
                                "supports_prefill": prefill})


HEAD = ToolCallDelta(0, id="call_abc", name="get_weather", arguments='{"ci')
SECOND = ToolCallDelta(1, id="call_def", name="get_time", arguments="")
REST = ToolCallDelta(0, arguments='ty": "Paris"}')


async def consume(provider: type[AsyncGeneratorProvider], **fields: Any
                  ) -> tuple[list[StreamEvent], PatchbayError | None]:
    stream = provider.stream("m", HELLO, **fields)
    events: list[StreamEvent] = []
    try:
        async for event in stream:
            events.append(event)
    except PatchbayError as exc:
        return events, exc
    return events, None


def delivered_calls(events: list[StreamEvent]) -> list[ToolCallDelta]:
    return [e for e in events if isinstance(e, ToolCallDelta)]


@pytest.mark.parametrize("error", [UpstreamError, ConnectionFailed, RateLimited])
async def test_a_failure_after_a_tool_fragment_is_not_retried_on_the_same_target(
        error: type[PatchbayError]) -> None:
    a = once("A", HEAD, error=error, prefill=True)
    router = Router.configure({"m": [Target(a)]}, retry=RetryPolicy(attempts=3))
    router.sleep = no_sleep  # type: ignore[assignment]
    events, failure = await consume(router)
    assert isinstance(failure, StreamInterrupted) and isinstance(failure.__cause__, PatchbayError)
    assert len(a.calls) == 1
    assert delivered_calls(events) == [HEAD]


@pytest.mark.parametrize("mid_stream", ["continue", "error"])
@pytest.mark.parametrize("lead", [(), (TextDelta("Let me check. "),)], ids=["tools-only", "text-then-tools"])
async def test_a_failure_after_a_tool_fragment_never_falls_back_even_to_a_prefill_target(
        mid_stream: str, lead: tuple[Fragment, ...]) -> None:
    a = once("A", *lead, HEAD, SECOND, REST, error=ConnectionFailed)
    b = once("B", prefill=True)
    router = Router.configure({"m": [Target(a), Target(b)]}, mid_stream=mid_stream)  # type: ignore[arg-type]
    router.sleep = no_sleep  # type: ignore[assignment]
    events, failure = await consume(router)
    assert isinstance(failure, StreamInterrupted)
    assert failure.partial_text == "".join(f.text for f in lead if isinstance(f, TextDelta))
    assert b.calls == [] and len(a.calls) == 1
    assert not any(isinstance(e, Fallback) for e in events)
    assert delivered_calls(events) == [HEAD, SECOND, REST]  # ids and indexes exactly as first delivered


async def test_text_only_still_continues_on_a_prefill_target() -> None:
    """The control of the test above: the same failure after text alone is continued."""
    a = once("A", TextDelta("Let me check. "), error=ConnectionFailed)
    b = once("B", prefill=True)
    router = Router.configure({"m": [Target(a), Target(b)]})
    events, failure = await consume(router)
    assert failure is None
    assert b.calls == [[*HELLO, {"role": "assistant", "content": "Let me check. "}]]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me check. a fresh answer"


async def test_a_nested_router_does_not_fall_back_after_a_tool_fragment_either() -> None:
    a = once("A", HEAD, error=UpstreamError)
    b = once("B", prefill=True)
    c = once("C", prefill=True)
    inner = Router.configure({"m": [Target(a), Target(b)]}, name="Inner", retry=RetryPolicy(attempts=2))
    outer = Router.configure({"m": [Target(inner, "m"), Target(c)]}, name="Outer", retry=RetryPolicy(attempts=2))
    inner.sleep = outer.sleep = no_sleep  # type: ignore[assignment]
    events, failure = await consume(outer)
    assert isinstance(failure, StreamInterrupted)
    assert (len(a.calls), b.calls, c.calls) == (1, [], [])
    assert delivered_calls(events) == [HEAD]
    assert not any(isinstance(e, Fallback) for e in events)


# -- OpenAICompatible: no key rotation once a tool fragment went out -----------------------------------


KEYS = ["sk-first-key-1111", "sk-second-key-2222"]


def break_stream(fake: OpenAIFake, *, after: int, times: int = 1, status: int = 401) -> list[dict[str, Any]]:
    """Make the fake's next ``times`` streamed answers send ``after`` events, then an in-stream
    error object (401 by default: the key is invalid). Returns the chunks it sent, parsed."""
    original = fake.send
    sent: list[dict[str, Any]] = []
    left = [times]

    async def send(request: web.Request, pieces: Sequence[bytes], **options: Any) -> web.StreamResponse:
        if left[0] > 0 and pieces and pieces[0].startswith(b"data: "):
            left[0] -= 1
            kept = list(pieces[:after])
            sent.extend(json.loads(piece.removeprefix(b"data: ")) for piece in kept)
            pieces = [*kept, sse(error_object(status))]
        return await original(request, pieces, **options)

    fake.send = send  # type: ignore[method-assign]
    return sent


def fake_provider(fake: OpenAIFake, name: str = "Fake", **options: Any) -> type[OpenAICompatible]:
    options.setdefault("default_model", "fake-small")
    return OpenAICompatible.configure(name, base_url=fake.api_base, **options)


def sent_tool_deltas(chunks: list[dict[str, Any]]) -> list[ToolCallDelta]:
    """The tool-call fragments of chunks the fake sent, as the client should have received them."""
    deltas = []
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
            function = call.get("function") or {}
            deltas.append(ToolCallDelta(call["index"], call.get("id"), function.get("name"),
                                        function.get("arguments") or ""))
    return deltas


async def test_a_rejected_key_after_a_tool_fragment_is_not_rotated(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "tool_call"
    sent = break_stream(openai_fake, after=2)  # the call's head (id, name) and its first arguments
    provider = fake_provider(openai_fake, api_keys=KEYS)
    stream = provider.stream(None, HELLO, tools=TOOLS, timeout=FAST)
    events: list[StreamEvent] = []
    with pytest.raises(StreamInterrupted) as caught:
        async for event in stream:
            events.append(event)
    assert isinstance(caught.value.__cause__, AuthError)
    assert openai_fake.chat_count == 1
    assert provider.credentials.current() == KEYS[0] and "(banned)" not in repr(provider.credentials)
    expected = sent_tool_deltas(sent)
    assert expected and expected[0].id and expected[0].name == "get_weather"
    assert delivered_calls(events) == expected


async def test_a_rejected_key_after_a_tool_fragment_does_not_fall_back_through_the_router(
        openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "tool_call"
    sent = break_stream(openai_fake, after=3)
    first = fake_provider(openai_fake, api_keys=KEYS)
    second = fake_provider(openai_fake, "Second", prefill=True)
    router = Router.configure({"m": [Target(first, "fake-small"), Target(second, "fake-small")]},
                              retry=RetryPolicy(attempts=2))
    router.sleep = no_sleep  # type: ignore[assignment]
    events, failure = await consume(router, tools=TOOLS, timeout=FAST)
    assert isinstance(failure, StreamInterrupted)
    assert openai_fake.chat_count == 1 and first.credentials.current() == KEYS[0]
    assert delivered_calls(events) == sent_tool_deltas(sent)
    assert not any(isinstance(e, Fallback) for e in events)


async def test_a_key_rejected_before_any_fragment_is_rotated(openai_fake: OpenAIFake) -> None:
    """The control of the tests above: the same in-stream 401 before any output bans the key."""
    openai_fake.scenario = "tool_call"
    break_stream(openai_fake, after=0)
    provider = fake_provider(openai_fake, api_keys=KEYS)
    stream = provider.stream(None, HELLO, tools=TOOLS, timeout=FAST)
    events = [event async for event in stream]
    assert openai_fake.chat_count == 2 and provider.credentials.current() == KEYS[1]
    calls = delivered_calls(events)
    assert calls and calls[0].index == 0 and calls[0].name == "get_weather"
    assert json.loads("".join(c.arguments for c in calls)) == openai_fake.tool_arguments


async def test_text_cut_off_upstream_is_continued_with_exactly_that_prefill(openai_fake: OpenAIFake) -> None:
    """On the wire: the continuing target receives the delivered text as its trailing assistant
    message, and the client's text is that text followed by the continuation only."""
    sent = break_stream(openai_fake, after=3, status=500)  # the role chunk and two pieces of text
    first = fake_provider(openai_fake)
    second = fake_provider(openai_fake, "Second", prefill=True)
    router = Router.configure({"m": [Target(first, "fake-small"), Target(second, "fake-small")]})
    router.sleep = no_sleep  # type: ignore[assignment]
    events, failure = await consume(router, timeout=FAST)
    assert failure is None
    delivered = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in sent)
    assert delivered and openai_fake.prefills == [delivered]
    assert openai_fake.last_body["messages"] == [*HELLO, {"role": "assistant", "content": delivered}]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == delivered + openai_fake.continuation
    assert [f.delivered for f in events if isinstance(f, Fallback)] == [len(delivered)]
