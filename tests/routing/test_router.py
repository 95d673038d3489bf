"""The router: fallback, retries, cooldowns, continuation, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from patchbay.chat.messages import Messages
from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import (
    AllProvidersFailed,
    AuthError,
    ConnectionFailed,
    ContextTooLong,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotSupported,
    PatchbayError,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
)
from patchbay.events import Fallback, ProviderInfo, StreamEvent, TextDelta
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.providers.catalog import ModelRecord, catalog, reset_catalog
from patchbay.routing import CooldownPolicy, MemoryStateStore, RetryPolicy, RetryProvider, Router, Target
from patchbay.routing.state import Health
from patchbay.routing.strategies import get_strategy
from patchbay.timeouts import Timeout

HELLO = [{"role": "user", "content": "hi"}]


class Script(AsyncGeneratorProvider):
    """A provider that plays ``plan``: one entry per request, each ("ok" | "fail", parts, error)."""

    models: ClassVar[list[str]] = ["m"]  # its default model: a bare target in route "m" asks for "m"
    plan: ClassVar[list[tuple[list[str], PatchbayError | None]]] = []
    calls: ClassVar[list[Messages]] = []
    default: ClassVar[tuple[list[str], PatchbayError | None]] = (["fine"], None)

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        cls.calls.append(request.message_dicts())
        parts, error = cls.plan.pop(0) if cls.plan else cls.default
        for part in parts:
            yield TextDelta(part)
            await asyncio.sleep(0)
        if error is not None:
            raise error


def script(name: str, *plan: tuple[list[str], PatchbayError | None], prefill: bool = False,
           default: tuple[list[str], PatchbayError | None] | None = None) -> type[Script]:
    attrs = {"name": name, "plan": list(plan), "calls": [], "supports_prefill": prefill,
             "default": default or ([f"answer from {name}"], None)}
    return type(name, (Script,), attrs)


class Delays:
    """Records the backoff delays instead of sleeping."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


def router(routes: dict[str, list[Any]], **options: Any) -> tuple[type[Router], Delays]:
    delays = Delays()
    r = Router.configure(routes, **options)
    r.sleep = delays  # type: ignore[assignment]
    return r, delays


async def run(r: type[Router], model: str = "m", **kwargs: Any) -> tuple[str, list[StreamEvent]]:
    stream = r.stream(model, HELLO, **kwargs)
    events = [e async for e in stream]
    return stream.text, events


# -- fallback and retries before the first text ------------------------------------------------


async def test_transient_failure_is_retried_then_the_next_target_answers() -> None:
    a = script("A", ([], UpstreamError("boom 1")), ([], UpstreamError("boom 2")))
    b = script("B")
    r, delays = router({"m": [Target(a), Target(b)]}, retry=RetryPolicy(attempts=2), seed=1)
    text, events = await run(r)
    assert text == "answer from B"
    assert len(a.calls) == 2 and len(b.calls) == 1
    assert len(delays.seen) == 1 and 0.125 <= delays.seen[0] < 0.375  # 0.25 s with jitter in [0.5, 1.5)
    announced = [e for e in events if isinstance(e, ProviderInfo)]
    assert announced[-1] == ProviderInfo("B", "m")  # each attempt announces itself; B answered
    assert [(f.provider, f.error) for f in events if isinstance(f, Fallback)] == [("A", "UpstreamError")]


async def test_retry_after_is_honoured_up_to_the_cap() -> None:
    a = script("A", ([], RateLimited("slow down", retry_after=2.5)))
    r, delays = router({"m": [Target(a)]}, retry=RetryPolicy(attempts=2, max_retry_after=5))
    assert (await run(r))[0] == "answer from A"
    assert delays.seen == [2.5]


async def test_retry_after_over_the_cap_moves_on_and_cools_down() -> None:
    clock = FakeClock()
    a = script("A", ([], RateLimited("come back in a minute", retry_after=60)))
    b = script("B")
    r, delays = router({"m": [Target(a), Target(b)]}, retry=RetryPolicy(max_retry_after=5),
                       state=MemoryStateStore(clock=clock))
    r.clock = clock  # type: ignore[assignment]
    assert (await run(r))[0] == "answer from B"
    assert delays.seen == []
    await run(r)  # A is cooling down for 60 s: not asked
    assert len(a.calls) == 1
    clock.now += 61
    await run(r)
    assert len(a.calls) == 2


async def test_auth_failure_moves_on_without_retrying() -> None:
    a = script("A", ([], AuthError("bad key")))
    b = script("B")
    r, delays = router({"m": [Target(a), Target(b)]})
    assert (await run(r))[0] == "answer from B"
    assert len(a.calls) == 1 and delays.seen == []


async def test_invalid_request_does_not_fall_over() -> None:
    a = script("A", ([], InvalidRequest("messages[0] is wrong")))
    b = script("B")
    r, _ = router({"m": [Target(a), Target(b)]})
    with pytest.raises(InvalidRequest):
        await run(r)
    assert b.calls == []


async def test_context_too_long_moves_to_a_larger_window() -> None:
    small = script("Small", ([], ContextTooLong("too long", limit=10, size=20)))
    smaller = script("Smaller")
    large = script("Large")
    for name, window in (("Small", 1000), ("Smaller", 500), ("Large", 100_000)):
        catalog().add(ModelRecord(name, "x", context_window=window))
    try:
        r, _ = router({"m": [Target(small, "x"), Target(smaller, "x"), Target(large, "x")]})
        assert (await run(r))[0] == "answer from Large"
        assert smaller.calls == []
    finally:
        reset_catalog()


async def test_unknown_route_lists_the_routes() -> None:
    r, _ = router({"gpt-4o": [Target(script("A"))], "llama": [Target(script("B"))]})
    with pytest.raises(ModelNotSupported, match="routes: gpt-4o, llama"):
        r.stream("gpt-5", HELLO)


# -- when every target fails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "status"),
    [
        ([RateLimited("a", retry_after=0.0), RateLimited("b", retry_after=0.0)], 429),
        ([AuthError("a"), AuthError("b")], 401),
        ([AuthError("a"), UpstreamError("b")], 502),
    ],
)
async def test_all_failed_lists_every_attempt_with_the_right_status(errors: list[PatchbayError], status: int) -> None:
    providers = [script(f"P{i}", *[([], e)] * 2) for i, e in enumerate(errors)]
    r, _ = router({"m": [Target(p) for p in providers]}, retry=RetryPolicy(attempts=1))
    with pytest.raises(AllProvidersFailed) as info:
        await run(r)
    assert info.value.status == status
    assert [(a.provider, a.error) for a in info.value.attempts] == [
        (f"P{i}", type(e).__name__) for i, e in enumerate(errors)]
    assert all(f"P{i}/m" in str(info.value) for i in range(len(errors)))


# -- cooldowns and health --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_repeated_failures_cool_a_target_down_until_expiry() -> None:
    clock = FakeClock()
    a = script("A", default=([], ConnectionFailed("refused")))
    b = script("B")
    r, _ = router({"m": [Target(a), Target(b)]}, retry=RetryPolicy(attempts=1),
                  cooldown=CooldownPolicy(failures=2, window=60, duration=30), state=MemoryStateStore(clock=clock))
    r.clock = clock  # type: ignore[assignment]
    await run(r)
    await run(r)
    assert len(a.calls) == 2
    await run(r)  # cooling down: skipped
    assert len(a.calls) == 2
    clock.now += 31
    await run(r)
    assert len(a.calls) == 3
    health = await r.health()
    assert health["A/m"].failures == 3 and "refused" in (health["A/m"].last_error or "")
    assert health["B/m"].successes == 4 and health["B/m"].success_rate == 1.0


async def test_all_targets_cooling_down_are_still_tried() -> None:
    clock = FakeClock()
    a = script("A", ([], ConnectionFailed("x")))
    r, _ = router({"m": [Target(a)]}, retry=RetryPolicy(attempts=1), cooldown=CooldownPolicy(failures=1),
                  state=MemoryStateStore(clock=clock))
    r.clock = clock  # type: ignore[assignment]
    with pytest.raises(AllProvidersFailed):
        await run(r)
    assert (await run(r))[0] == "answer from A"


# -- after the first text -------------------------------------------------------------------------


async def test_mid_stream_failure_continues_on_a_prefill_target_without_repeating() -> None:
    a = script("A", (["The capital ", "of France "], ConnectionFailed("reset")))
    plain = script("Plain")
    b = script("B", (["is Paris."], None), prefill=True)
    r, _ = router({"m": [Target(a), Target(plain), Target(b)]})
    text, events = await run(r)
    assert text == "The capital of France is Paris."
    assert plain.calls == []  # it could only have started over
    assert b.calls[0][-1] == {"role": "assistant", "content": "The capital of France "}
    fallback = next(e for e in events if isinstance(e, Fallback))
    assert (fallback.provider, fallback.delivered) == ("A", len("The capital of France "))


async def test_mid_stream_error_mode_reports_the_partial_text() -> None:
    a = script("A", (["The capital "], ConnectionFailed("reset")))
    b = script("B", prefill=True)
    r, _ = router({"m": [Target(a), Target(b)]}, mid_stream="error")
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for text in r.create_async_generator("m", HELLO):
            received.append(text)
    assert info.value.partial_text == "".join(received) == "The capital "
    assert b.calls == []


async def test_no_prefill_target_means_interrupted_never_repeated() -> None:
    a = script("A", (["Half an answer"], ConnectionFailed("reset")))
    b = script("B")
    r, _ = router({"m": [Target(a), Target(b)]})
    with pytest.raises(StreamInterrupted) as info:
        await run(r)
    assert info.value.partial_text == "Half an answer"
    assert b.calls == []


async def test_continuation_target_failing_too_keeps_all_delivered_text() -> None:
    a = script("A", (["one "], ConnectionFailed("reset")))
    b = script("B", (["two "], ConnectionFailed("reset again")), prefill=True)
    r, _ = router({"m": [Target(a), Target(b)]})
    with pytest.raises(StreamInterrupted) as info:
        await run(r)
    assert info.value.partial_text == "one two "


# -- strategies -------------------------------------------------------------------------------------


def test_weighted_strategy_follows_the_weights() -> None:
    a, b = script("A"), script("B")
    targets = [Target(a, weight=1), Target(b, weight=3)]
    rng = random.Random(7)
    firsts = Counter(get_strategy("weighted")(targets, {}, rng)[0].provider.name for _ in range(4000))
    assert 0.70 < firsts["B"] / 4000 < 0.80


def test_latency_and_busy_strategies_use_health() -> None:
    a, b, c = Target(script("A")), Target(script("B")), Target(script("C"))
    health = {a: Health(ttft=0.5, in_flight=3), b: Health(ttft=0.1, in_flight=0), c: Health(in_flight=1)}
    rng = random.Random(1)
    assert [t.provider.name for t in get_strategy("lowest_latency")([a, b, c], health, rng)] == ["C", "B", "A"]
    assert [t.provider.name for t in get_strategy("least_busy")([a, b, c], health, rng)] == ["B", "C", "A"]
    assert sorted(t.provider.name for t in get_strategy("shuffle")([a, b, c], health, rng)) == ["A", "B", "C"]
    with pytest.raises(InvalidRequest, match="choose one of priority, shuffle"):
        get_strategy("fastest")


# -- composition, deadline, cancellation --------------------------------------------------------------


async def test_retry_provider_is_a_provider_and_composes() -> None:
    a = script("A", ([], UpstreamError("down")))
    b = script("B")
    inner = RetryProvider([a, b], retry=RetryPolicy(attempts=1))
    outer, _ = router({"m": [Target(inner)]})
    assert (await run(outer))[0] == "answer from B"
    assert "".join(RetryProvider([script("C")]).create_completion("any", HELLO)) == "answer from C"


async def test_one_total_deadline_across_attempts() -> None:
    budgets: list[float] = []

    class Slow(Script):
        name = "Slow"

        @classmethod
        async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
            assert call.timeout.total is not None
            budgets.append(call.timeout.total)
            await asyncio.sleep(call.timeout.total)  # a hung upstream uses up what is left
            raise DeadlineExceeded("no answer in time")
            yield TextDelta("never")

    r = Router.configure({"m": [Target(Slow), Target(Slow)]}, retry=RetryPolicy(attempts=3))
    with pytest.raises(DeadlineExceeded) as info:
        await r.create_async("m", HELLO, timeout=Timeout(total=0.3))
    assert "deadline of 0.3 s after: Slow/m: DeadlineExceeded" in str(info.value)
    # Each attempt gets only what is left of the one budget, and once it is spent nothing more is tried
    # (6 attempts were allowed: 2 targets x 3).
    assert budgets[0] <= 0.3 and len(budgets) == 1


async def test_cancelled_consumer_closes_the_target_stream() -> None:
    closed = asyncio.Event()

    class Endless(Script):
        name = "Endless"

        @classmethod
        async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
            try:
                for i in range(10_000):
                    yield TextDelta(str(i))
                    await asyncio.sleep(0)
            finally:
                closed.set()

    r, _ = router({"m": [Target(Endless)]})
    stream = r.create_async_generator("m", HELLO)
    async for _ in stream:
        break
    await stream.aclose()
    assert closed.is_set()
    health = await r.health()
    assert health["Endless/m"].in_flight == 0


async def test_secrets_in_upstream_errors_never_reach_events_or_errors() -> None:
    from patchbay.redact import register_secret

    register_secret("sk-router-secret-999")
    a = script("A", ([], AuthError("key sk-router-secret-999 rejected")))
    b = script("B")
    r, _ = router({"m": [Target(a), Target(b)]})
    _, events = await run(r)
    assert "sk-router-secret-999" not in repr(events)
    assert "sk-router-secret-999" not in repr(await r.health())


def test_configuration_mistakes_are_named() -> None:
    with pytest.raises(InvalidRequest, match="mid_stream must be"):
        Router.configure({"m": [Target(script("A"))]}, mid_stream="retry")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="at least one provider"):
        RetryProvider([])
    with pytest.raises(InvalidRequest, match="route 'm' has no targets"):
        Router.configure({"m": []})
