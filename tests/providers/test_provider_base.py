"""The provider base class, with a scripted in-process provider (no network)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import AuthError, ConnectionFailed, InvalidRequest, ModelNotSupported, StreamInterrupted
from patchbay.events import Finish, ProviderInfo, StreamConsumed, StreamEvent, TextDelta, Usage
from patchbay.net.transport import IncompleteResponse
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin

HELLO = [{"role": "user", "content": "hi"}]


class Scripted(AsyncGeneratorProvider, ProviderModelMixin):
    """Yields ``parts`` then fails with ``fail`` (if set); records whether it was closed."""

    default_model = "m1"
    models: ClassVar[list[str]] = ["m1", "m2"]
    model_aliases: ClassVar[dict[str, str]] = {"alias": "m2"}
    parts: ClassVar[list[str]] = ["Hel", "lo ", "wörld 🌍"]
    fail: ClassVar[BaseException | None] = None
    closed: ClassVar[threading.Event] = threading.Event()
    seen: ClassVar[dict[str, Any]] = {}

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        flavour = (request.extra_body or {}).get("flavour", "plain")
        cls.seen.update(model=call.model, flavour=flavour, timeout=call.timeout)
        try:
            for part in cls.parts:
                yield TextDelta(part)
                await asyncio.sleep(0)
            if cls.fail is not None:
                raise cls.fail
            yield Usage(3, 4)
            yield Finish("stop")
        finally:
            cls.closed.set()


@pytest.fixture(autouse=True)
def reset() -> None:
    Scripted.parts = ["Hel", "lo ", "wörld 🌍"]
    Scripted.fail = None
    Scripted.closed = threading.Event()
    Scripted.seen = {}


async def test_async_for_yields_text_only() -> None:
    assert [t async for t in Scripted.create_async_generator("m1", HELLO)] == ["Hel", "lo ", "wörld 🌍"]


async def test_awaited_generator_form_of_the_old_documentation() -> None:
    generator = await Scripted.create_async_generator(model="m1", messages=HELLO)
    assert "".join([t async for t in generator]) == "Hello wörld 🌍"


async def test_event_stream_records_everything() -> None:
    stream = Scripted.stream("alias", HELLO, flavour="spicy")
    events = [e async for e in stream]
    assert events[0] == ProviderInfo(provider="Scripted", model="m2")
    assert stream.text == "Hello wörld 🌍"
    assert stream.usage == Usage(3, 4, cost=0.0) and stream.usage.total_tokens == 7
    assert stream.finish_reason == "stop"
    assert Scripted.seen["flavour"] == "spicy"


async def test_a_stream_is_consumed_once() -> None:
    stream = Scripted.stream("m1", HELLO)
    await stream.collect()
    with pytest.raises(StreamConsumed):
        async for _ in stream:
            pass


async def test_failure_after_text_carries_exactly_the_delivered_text() -> None:
    Scripted.fail = ConnectionFailed("reset by peer")
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for text in Scripted.create_async_generator("m1", HELLO):
            received.append(text)
    assert info.value.partial_text == "".join(received) == "Hello wörld 🌍"
    assert isinstance(info.value.__cause__, ConnectionFailed)
    assert info.value.provider == "Scripted" and info.value.model == "m1"


async def test_transport_exception_is_mapped_and_named() -> None:
    Scripted.parts = []
    Scripted.fail = IncompleteResponse("the server closed the connection")
    with pytest.raises(ConnectionFailed) as info:
        await Scripted.create_async("m1", HELLO)
    assert str(info.value).startswith("Scripted: ")


async def test_failure_before_text_keeps_its_class_and_gets_context() -> None:
    Scripted.parts = []
    Scripted.fail = AuthError("no")
    with pytest.raises(AuthError) as info:
        await Scripted.create_async(None, HELLO)
    assert (info.value.provider, info.value.model) == ("Scripted", "m1")


def test_bad_input_fails_at_the_call() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role"):
        Scripted.create_async_generator("m1", [{"role": "robot", "content": "x"}])
    with pytest.raises(ModelNotSupported, match="valid models: alias, m1, m2"):
        Scripted.create_completion("gpt-9", HELLO)


def test_get_model_rules() -> None:
    assert Scripted.get_model("") == "m1"
    assert Scripted.get_model("alias") == "m2"
    assert Scripted.is_supported("m2") and not Scripted.is_supported("m3")
    assert Scripted.get_models() == ["m1", "m2"]


def test_sync_completion_without_a_loop() -> None:
    assert "".join(Scripted.create_completion("m1", HELLO)) == "Hello wörld 🌍"


async def test_sync_completion_inside_a_running_loop() -> None:
    # As in Jupyter or an async web framework: a loop runs in this thread.
    assert asyncio.get_running_loop().is_running()
    assert "".join(Scripted.create_completion("m1", HELLO)) == "Hello wörld 🌍"


def test_sync_completion_closes_upstream_when_caller_stops() -> None:
    Scripted.parts = ["a"] * 1000
    stream = Scripted.create_completion("m1", HELLO)
    assert next(stream) == "a"
    assert not Scripted.closed.is_set()
    stream.close()
    assert Scripted.closed.wait(5)


def test_sync_completion_closes_upstream_on_break() -> None:
    Scripted.parts = ["a"] * 1000
    for _ in Scripted.create_completion("m1", HELLO):
        break
    assert Scripted.closed.wait(5)


async def test_async_consumer_closing_early_closes_upstream() -> None:
    Scripted.parts = ["a"] * 1000
    stream = Scripted.create_async_generator("m1", HELLO)
    async for _ in stream:
        break
    await stream.aclose()
    assert Scripted.closed.is_set()


def test_params_describe_the_signature() -> None:
    params = Scripted.params
    assert params.startswith(f"{__name__}.Scripted supports: (model: str, messages: list, stream, ")
    assert all(f" {field}," in params for field in ("max_tokens", "tools", "response_format", "n", "logprobs"))
    assert params.endswith("proxy: str, base_url: str, timeout: Timeout, auth: str, api_key: str)")


async def test_timeout_number_becomes_value_object() -> None:
    await Scripted.create_async("m1", HELLO, timeout=2.5)
    assert Scripted.seen["timeout"].total == 2.5
