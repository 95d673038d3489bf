"""The router's hygiene: what a request needs decides the route, and what the client got wrong
says nothing about a target's health.

- :func:`~patchbay.providers.capabilities.needs` names every feature a request asks for, with
  the field that asks; :meth:`Capabilities.merged` lays per-provider overrides on top and names
  a mistake in them.
- A target that cannot honour a need is skipped (an attempt marked ``skipped`` that says why);
  when no target can, the answer is UnsupportedFeature (400) naming the route, the feature and
  the field, never an answer that dropped part of the request. A capable target in cooldown is
  still used when it is the only one that can honour the request.
- InvalidRequest (other than ContextTooLong) leaves the target's health and cooldown alone;
  after earlier attempts, a decisive 4xx becomes AllProvidersFailed with that status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from patchbay.chat.request import ChatCompletionRequest, request_from_kwargs
from patchbay.errors import (
    AllProvidersFailed,
    ContextTooLong,
    InvalidRequest,
    PatchbayError,
    UnsupportedFeature,
    UpstreamError,
)
from patchbay.events import StreamEvent, TextDelta
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.providers.capabilities import FEATURES, Capabilities, Need, Support, needs
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import CooldownPolicy, MemoryStateStore, RetryPolicy, Router, Target
from tests.replicas.base import refused_url

HELLO = [{"role": "user", "content": "hi"}]
IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Scripted(AsyncGeneratorProvider):
    """Answers ``answer``, or raises the next of ``failures`` (a factory per call) while any are left."""

    models: ClassVar[list[str]] = ["m"]
    failures: ClassVar[list[Any]] = []
    calls: ClassVar[list[ChatCompletionRequest]] = []

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        cls.calls.append(request)
        if cls.failures:
            raise cls.failures.pop(0)()
        yield TextDelta(f"answer from {cls.name}")
        await asyncio.sleep(0)


def scripted(name: str, *failures: Any, features: Capabilities | None = None) -> type[Scripted]:
    attrs: dict[str, Any] = {"name": name, "failures": list(failures), "calls": []}
    if features is not None:
        attrs["features"] = features
    return type(name, (Scripted,), attrs)


def router(*targets: type[AsyncGeneratorProvider], clock: FakeClock | None = None, **options: Any
           ) -> type[Router]:
    clock = clock or FakeClock()
    options.setdefault("retry", RetryPolicy(attempts=1))
    r = Router.configure({"m": [Target(t) for t in targets]}, state=MemoryStateStore(clock=clock), **options)
    r.clock = clock  # type: ignore[assignment]

    async def no_sleep(seconds: float) -> None:
        """No backoff waits in these tests."""

    r.sleep = no_sleep  # type: ignore[assignment]
    return r


async def answer(r: type[Router], messages: list[dict[str, Any]] = HELLO, **fields: Any) -> str:
    return await r.create_async("m", messages, **fields)


async def failure(r: type[Router], messages: list[dict[str, Any]] = HELLO, **fields: Any) -> PatchbayError:
    with pytest.raises(PatchbayError) as caught:
        await answer(r, messages, **fields)
    return caught.value


def max_tokens_too_large() -> InvalidRequest:
    return InvalidRequest("max_tokens too large", param="max_tokens")


# -- health and cooldown ----------------------------------------------------------------------------


async def test_invalid_requests_leave_the_targets_health_and_cooldown_alone() -> None:
    clock = FakeClock()
    a = scripted("A", *[max_tokens_too_large] * 3)
    b = scripted("B")
    r = router(a, b, clock=clock, cooldown=CooldownPolicy(failures=3))
    for _ in range(3):
        error = await failure(r)
        assert type(error) is InvalidRequest and error.param == "max_tokens"
    assert b.calls == []  # an invalid request would fail anywhere: not passed on
    health = await r.health()
    assert "A/m" not in health or (health["A/m"].failures == 0 and health["A/m"].last_error is None)
    assert await r.state.cooldown_until("A/m") is None
    assert await answer(r) == "answer from A"  # not cooling down: still first


@pytest.mark.parametrize("make", [lambda: ContextTooLong("too long", limit=10, size=20),
                                  lambda: UpstreamError("upstream answered 500")],
                         ids=["ContextTooLong", "UpstreamError"])
async def test_context_too_long_and_upstream_errors_still_count(make: Any) -> None:
    clock = FakeClock()
    a = scripted("A", *[make] * 3)
    b = scripted("B")
    r = router(a, b, clock=clock, cooldown=CooldownPolicy(failures=3, duration=30))
    for _ in range(3):
        with contextlib.suppress(PatchbayError):  # ContextTooLong moves only to a larger window: none here
            await answer(r)
    health = await r.health()
    assert health["A/m"].failures == 3 and health["A/m"].last_error
    until = await r.state.cooldown_until("A/m")
    assert until is not None and until > clock.now
    assert await answer(r) == "answer from B"  # A is cooling down
    assert len(a.calls) == 3


async def test_a_decisive_4xx_after_a_5xx_is_all_providers_failed_with_status_400() -> None:
    a = scripted("A", lambda: UpstreamError("upstream answered 503", status=503))
    b = scripted("B", max_tokens_too_large)
    r = router(a, b)
    error = await failure(r)
    assert isinstance(error, AllProvidersFailed)
    assert error.status == 400
    assert [(x.provider, x.error, x.status) for x in error.attempts] == [("A", "UpstreamError", 502),
                                                                         ("B", "InvalidRequest", 400)]
    body = error.to_dict()
    assert [(x["provider"], x["error"], x["skipped"]) for x in body["attempts"]] == [  # type: ignore[attr-defined]
        ("A", "UpstreamError", False), ("B", "InvalidRequest", False)]
    assert body["type"] == "invalid_request_error"


async def test_a_lone_invalid_request_stays_itself() -> None:
    r = router(scripted("A", max_tokens_too_large), scripted("B"))
    error = await failure(r)
    assert type(error) is InvalidRequest and error.status == 400 and error.param == "max_tokens"


# -- skipped targets ---------------------------------------------------------------------------------


async def test_an_image_skips_a_text_only_target_and_the_native_one_answers() -> None:
    text_only = scripted("TextOnly")
    native = scripted("Native", features=Capabilities.all_native())
    assert await answer(router(text_only, native), IMAGE) == "answer from Native"
    assert text_only.calls == []
    assert native.calls[0].message_dicts() == IMAGE  # the parts went on as they were


async def test_a_skipped_target_is_an_attempt_that_says_why() -> None:
    text_only = scripted("TextOnly")
    native = scripted("Native", lambda: UpstreamError("upstream answered 500"), features=Capabilities.all_native())
    error = await failure(router(text_only, native), IMAGE)
    assert isinstance(error, AllProvidersFailed)
    attempts = error.to_dict()["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 2
    skipped, tried = attempts
    assert skipped["provider"] == "TextOnly" and skipped["skipped"] is True
    assert "images" in skipped["message"]
    assert tried["provider"] == "Native" and tried["skipped"] is False and tried["error"] == "UpstreamError"
    assert error.status == 502  # what was tried decides the status; a skipped target is not a try
    assert text_only.calls == []


async def test_no_target_that_takes_images_is_a_400_naming_the_route_and_the_field() -> None:
    a, b = scripted("A"), scripted("B")
    error = await failure(router(a, b), IMAGE)
    assert isinstance(error, UnsupportedFeature) and error.status == 400
    assert error.param == "messages[0].content[1]"
    assert "'m'" in error.message and "images" in error.message and "messages[0].content[1]" in error.message
    assert a.calls == b.calls == []


async def test_required_tool_choice_skips_a_target_without_tools() -> None:
    plain = scripted("Plain", features=Capabilities(tools=Support.NONE))
    tools_only = scripted("ToolsOnly", features=Capabilities(tools=Support.NATIVE))  # no forced choice
    full = scripted("Full", features=Capabilities(tools=Support.NATIVE, tool_choice=Support.NATIVE))
    r = router(plain, tools_only, full)
    assert await answer(r, tools=TOOLS, tool_choice="required") == "answer from Full"
    assert plain.calls == tools_only.calls == []
    assert await answer(r, tools=TOOLS, tool_choice="auto") == "answer from ToolsOnly"
    assert plain.calls == []
    error = await failure(router(tools_only, scripted("ToolsToo", features=Capabilities(tools=Support.NATIVE))),
                          tools=TOOLS, tool_choice="required")
    assert isinstance(error, UnsupportedFeature) and error.param == "tool_choice"


async def test_no_capable_target_names_a_need_that_no_target_accepts() -> None:
    """Plain takes neither tools nor a forced tool_choice, ToolsOnly takes tools only: what stops the
    route is tool_choice (no target takes it), not tools (ToolsOnly does)."""
    plain = scripted("Plain")
    tools_only = scripted("ToolsOnly", features=Capabilities(tools=Support.NATIVE))
    error = await failure(router(plain, tools_only), tools=TOOLS, tool_choice="required")
    assert isinstance(error, UnsupportedFeature)
    assert error.param == "tool_choice"


async def test_a_capable_target_in_cooldown_is_used_when_no_other_can_honour_the_request() -> None:
    clock = FakeClock()
    boom = [lambda: UpstreamError("upstream answered 500")] * 3
    capable = scripted("Capable", *boom, features=Capabilities.all_native())
    text_only = scripted("TextOnly")
    r = router(capable, text_only, clock=clock, cooldown=CooldownPolicy(failures=3, duration=30))
    for _ in range(3):
        assert await answer(r) == "answer from TextOnly"
    until = await r.state.cooldown_until("Capable/m")
    assert until is not None and until > clock.now
    assert await answer(r) == "answer from TextOnly"  # the control: cooling down, it is passed over
    assert len(capable.calls) == 3
    assert await answer(r, IMAGE) == "answer from Capable"
    assert len(capable.calls) == 4


async def test_per_provider_overrides_on_a_configured_subclass() -> None:
    no_vision = OpenAICompatible.configure("NoVision", base_url=refused_url() + "/v1", default_model="m",
                                           capabilities={"image_input": "none"})
    assert not no_vision.capabilities().accepts("image_input")
    assert no_vision.capabilities().support("tools") is Support.NATIVE  # the rest stays native
    assert OpenAICompatible.capabilities().accepts("image_input")  # the base class is untouched
    native = scripted("Native", lambda: UpstreamError("upstream answered 500"), features=Capabilities.all_native())
    error = await failure(router(no_vision, native), IMAGE)
    assert isinstance(error, AllProvidersFailed)
    assert [(a.provider, a.skipped) for a in error.attempts] == [("NoVision", True), ("Native", False)]
    # A subclass of a scripted target, with its features merged: skipped the same way.
    blind = scripted("Blind", features=Capabilities.all_native().merged({"image_input": "none"}))
    assert await answer(router(blind, scripted("Seeing", features=Capabilities.all_native())), IMAGE) == \
        "answer from Seeing"
    assert blind.calls == []


def test_configure_names_a_mistake_in_the_capabilities() -> None:
    with pytest.raises(InvalidRequest) as unknown:
        OpenAICompatible.configure("X", base_url="http://127.0.0.1:9/v1", capabilities={"vision": "none"})
    assert unknown.value.param == "providers.X.capabilities" and "vision" in unknown.value.message
    with pytest.raises(InvalidRequest) as bad_value:
        OpenAICompatible.configure("X", base_url="http://127.0.0.1:9/v1", capabilities={"tools": "sometimes"})
    assert bad_value.value.param == "providers.X.capabilities.tools"
    prefill = OpenAICompatible.configure("P", base_url="http://127.0.0.1:9/v1", capabilities={"prefill": "native"})
    assert prefill.supports_prefill and prefill.capabilities().accepts("prefill")


# -- needs() ---------------------------------------------------------------------------------------


def request(**fields: Any) -> ChatCompletionRequest:
    fields.setdefault("messages", HELLO)
    return request_from_kwargs({"model": "m", **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, []),
        ({"tools": TOOLS}, [Need("tools", "tools")]),
        ({"tools": TOOLS, "tool_choice": "auto"}, [Need("tools", "tools")]),
        ({"tools": TOOLS, "tool_choice": "none"}, []),
        ({"tools": TOOLS, "tool_choice": "required"}, [Need("tools", "tools"), Need("tool_choice", "tool_choice")]),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         [Need("tools", "tools"), Need("tool_choice", "tool_choice")]),
        ({"tools": TOOLS, "parallel_tool_calls": True},
         [Need("tools", "tools"), Need("parallel_tool_calls", "parallel_tool_calls")]),
        ({"tools": TOOLS, "parallel_tool_calls": False}, [Need("tools", "tools")]),
        ({"tool_choice": "required", "parallel_tool_calls": True}, []),  # no tools: nothing to call
        ({"response_format": {"type": "json_object"}}, [Need("json_object", "response_format")]),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
         [Need("json_schema", "response_format")]),
        ({"response_format": {"type": "text"}}, []),
        ({"logprobs": True}, [Need("logprobs", "logprobs")]),
        ({"logprobs": False}, []),
        ({"n": 2}, [Need("n", "n")]),
        ({"n": 1}, []),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                       {"role": "system", "content": "c"}]}, [Need("system_message", "messages[1]")]),
        ({"messages": [{"role": "developer", "content": "be brief"}, *HELLO]}, [Need("system_message", "messages[0]")]),
        ({"messages": [*HELLO, {"role": "assistant", "content": "The answer is"}]}, []),  # prefill is no need
        ({"messages": IMAGE}, [Need("image_input", "messages[0].content[1]")]),
        ({"messages": [*HELLO, {"role": "assistant", "content": "ok"}, {"role": "user", "content": [
            {"type": "text", "text": "listen"}, {"type": "refusal", "refusal": "no"},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
         [Need("image_input", "messages[2].content[2]")]),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "only text"}]}]}, []),
    ],
)
def test_needs_names_each_feature_and_the_field_that_asks(fields: dict[str, Any], expected: list[Need]) -> None:
    assert list(needs(request(**fields))) == expected


def test_needs_come_in_the_order_of_the_features() -> None:
    everything = request(
        messages=[{"role": "system", "content": "s"}, *IMAGE], tools=TOOLS, tool_choice="required",
        parallel_tool_calls=True, response_format={"type": "json_object"}, logprobs=True, n=3)
    found = needs(everything)
    assert [n.feature for n in found] == [f for f in FEATURES if f in {n.feature for n in found}]
    # a chat request never needs a prompt's or an embedding's features
    assert {n.feature for n in found} == set(FEATURES) - {"json_schema", "prefill", "text_completion", "embeddings"}
    assert all(n.phrase == FEATURES[n.feature] for n in found)


def test_merged_lays_overrides_on_top_and_names_mistakes() -> None:
    base = Capabilities()
    merged = base.merged({"tools": "emulated", "image_input": Support.NATIVE, "system_message": "none"})
    assert (merged.tools, merged.image_input, merged.system_message) == (Support.EMULATED, Support.NATIVE,
                                                                         Support.NONE)
    assert merged.accepts("tools") and not merged.accepts("system_message")
    assert base.tools is Support.NONE  # a new value; the original stays
    assert merged.as_dict()["tools"] == "emulated" and set(merged.as_dict()) == set(FEATURES)
    assert Capabilities.all_native().as_dict() == dict.fromkeys(FEATURES, "native")
    with pytest.raises(InvalidRequest) as unknown:
        base.merged({"telepathy": "native"}, where="providers.x.capabilities")
    assert unknown.value.param == "providers.x.capabilities" and "telepathy" in unknown.value.message
    with pytest.raises(InvalidRequest) as bad:
        base.merged({"tools": "maybe"})
    assert bad.value.param == "capabilities.tools" and "maybe" in bad.value.message
    with pytest.raises(InvalidRequest):
        base.merged({"tools": None})
