"""Legacy text completions (``POST /v1/completions``) over the chat pipeline.

- :func:`decode_completion_request` reads a legacy body into the one chat request (its
  ``prompt`` set, no messages), keeps ``echo`` out of it, defaults ``max_tokens`` to 16 as
  OpenAI does, and names the field of every mistake or unsupported option.
- OpenAI-compatible targets get it at ``{base}/completions``; the ``text_completion`` answer,
  streamed or whole, becomes the usual events.
- The router skips targets without the ``text_completion`` capability (a web chat never gets a
  prompt), falls back before any text, and continues an interrupted answer by extending the
  prompt, so nothing is sent twice.
- :class:`CompletionRendering` writes what validates against OpenAI's ``CreateCompletionResponse``
  (whole and each chunk); echo prepends the prompt; several prompts number their choices
  ``prompt * n + choice``.
- The embedded model (``model`` tier) completes a raw prompt, with no chat template.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from functools import cache
from typing import Any, ClassVar

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from patchbay.chat.request import ChatCompletionRequest, TextCompletionRequest, decode_request
from patchbay.chat.text_completion import (
    CompletionRendering,
    chain_prompts,
    completion_id,
    completion_request_from_dict,
    completion_request_schema,
    decode_completion_request,
)
from patchbay.errors import InvalidRequest, StreamInterrupted, UnsupportedFeature, UpstreamError
from patchbay.events import EventStream, Finish, StreamEvent, TextDelta, Transcript, Usage
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.providers.capabilities import Capabilities, Need, needs
from patchbay.providers.local.model import Local
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import MemoryStateStore, RetryPolicy, Router, Target
from tests.replicas.base import DEFAULT_ANSWER
from tests.replicas.openai_fake import OpenAIFake
from tests.support.paths import SCHEMAS


@cache
def _registry() -> Registry:
    document = json.loads(SCHEMAS.read_text())
    return Registry().with_resource("schemas.json", Resource.from_contents(document, DRAFT202012))


def validate(document: Any, *, chunk: bool = False) -> None:
    """``document`` against OpenAI's ``CreateCompletionResponse``; a stream chunk's null
    ``finish_reason`` is conformant (the schemas' README: the API sends it)."""
    if chunk:
        document = copy.deepcopy(document)
        for choice in document["choices"]:
            if choice["finish_reason"] is None:
                choice["finish_reason"] = "stop"
    validator = Draft202012Validator({"$ref": "schemas.json#/components/schemas/CreateCompletionResponse"},
                                     registry=_registry())
    errors = [f"{list(error.absolute_path)}: {error.message[:200]}" for error in validator.iter_errors(document)]
    assert not errors, errors


def completion(body: dict[str, Any]) -> tuple[TextCompletionRequest, bool, list[str]]:
    return decode_completion_request(json.dumps({"model": "m", **body}).encode())


def fake_provider(fake: OpenAIFake, name: str = "Fake", **options: Any) -> type[OpenAICompatible]:
    return OpenAICompatible.configure(name, base_url=fake.api_base, models=["fake-text"], **options)


def router(*targets: Target) -> type[Router]:
    r = Router.configure({"m": list(targets)}, state=MemoryStateStore(), retry=RetryPolicy(attempts=1))

    async def no_sleep(seconds: float) -> None:
        """No backoff waits in these tests."""

    r.sleep = no_sleep  # type: ignore[assignment]
    return r


async def run(provider: type[AsyncGeneratorProvider], request: ChatCompletionRequest) -> EventStream:
    """Read ``request``'s answer from ``provider`` to the end; the stream that saw it."""
    transcript = Transcript()
    events = EventStream(provider.open(request, transcript=transcript), transcript)
    async for _ in events:
        pass
    return events


def render(request: ChatCompletionRequest, events: list[StreamEvent], *, echo: bool = False,
           prompts: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The chunks and the whole answer a rendering makes of ``events``."""
    rendering = CompletionRendering(request, completion_id(), 1_700_000_000, "m", echo=echo, prompts=prompts)
    frames = [frame for event in events for frame in rendering.feed(event)] + rendering.finish()
    assert all(name is None for name, _ in frames)
    return [payload for _, payload in frames], rendering.result()


class WebChat(AsyncGeneratorProvider):
    """A text-only web chat: no text_completion capability; records every request it gets."""

    name = "WebChat"
    text_only = True
    features = Capabilities.emulated_output()
    models: ClassVar[list[str]] = ["web"]
    calls: ClassVar[list[ChatCompletionRequest]] = []

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        cls.calls.append(request)
        yield TextDelta("web answer")


# -- the request --------------------------------------------------------------------------------------


def test_a_legacy_body_becomes_the_chat_request_with_a_prompt() -> None:
    request, echo, prompts = completion({"prompt": "Once upon a time", "stop": ["\n"], "temperature": 0.2,
                                         "seed": 3, "stream": True, "echo": True, "top_k": 5, "suffix": "end."})
    assert (request.prompt, request.messages, echo, prompts) == ("Once upon a time", [], True, ["Once upon a time"])
    assert (request.stop, request.temperature, request.seed, request.stream) == (["\n"], 0.2, 3, True)
    assert request.max_tokens == 16  # OpenAI's default for this endpoint
    assert request.extra_body == {"top_k": 5, "suffix": "end."}  # echo is the endpoint's, never sent on
    assert needs(request) == (Need("text_completion", "prompt"),)


def test_a_list_of_prompts() -> None:
    request, echo, prompts = completion({"prompt": ["a", "b", ""], "max_tokens": 50, "n": 2})
    assert prompts == ["a", "b", ""] and request.prompt == "a" and request.max_tokens == 50 and not echo


MISTAKES: list[tuple[dict[str, Any], str, type[InvalidRequest]]] = [
    ({}, "prompt", InvalidRequest),
    ({"prompt": []}, "prompt", InvalidRequest),
    ({"prompt": 7}, "prompt", InvalidRequest),
    ({"prompt": ["a", None]}, "prompt[1]", InvalidRequest),
    ({"prompt": [1, 2, 3]}, "prompt", UnsupportedFeature),
    ({"prompt": [[1, 2]]}, "prompt", UnsupportedFeature),
    ({"prompt": "x", "messages": [{"role": "user", "content": "hi"}]}, "messages", InvalidRequest),
    ({"prompt": "x", "echo": "yes"}, "echo", InvalidRequest),
    ({"prompt": "x", "logprobs": 2}, "logprobs", UnsupportedFeature),
    ({"prompt": "x", "best_of": 3}, "best_of", UnsupportedFeature),
    ({"prompt": "x", "suffix": 5}, "suffix", InvalidRequest),
    ({"prompt": "x", "temperature": 3}, "temperature", InvalidRequest),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", InvalidRequest),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", InvalidRequest),
    ({"prompt": ["x"] * 33}, "prompt", InvalidRequest),
    ({"prompt": "x", "extra_body": 3}, "extra_body", InvalidRequest),
]


@pytest.mark.parametrize("body, param, error", MISTAKES)
def test_every_mistake_names_its_field(body: dict[str, Any], param: str, error: type[InvalidRequest]) -> None:
    with pytest.raises(error) as caught:
        completion(body)
    assert caught.value.param == param and caught.value.status == 400


def test_the_published_schema_refuses_those_mistakes_and_takes_what_is_accepted() -> None:
    validator = Draft202012Validator(completion_request_schema())
    mistakes = [body for body, param, _ in MISTAKES if param != "messages"]  # unknown fields go upstream
    assert [body for body in mistakes if validator.is_valid({"model": "m", **body})] == []
    for body in ({"prompt": ""}, {"prompt": ["a", "b"], "n": 3, "echo": True, "best_of": 1, "logprobs": 0},
                 {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}, "suffix": "y",
                  "max_tokens": 3, "stop": "z", "top_k": 4}):
        assert validator.is_valid({"model": "m", **body})
        completion(body)  # and the decoder takes it


def test_accepted_options_that_change_nothing() -> None:
    request, _, _ = completion({"prompt": "x", "logprobs": 0, "best_of": 1, "echo": False})
    assert request.extra_body is None


def test_a_chat_body_never_turns_into_a_raw_completion() -> None:
    chat = decode_request(json.dumps({"model": "m", "prompt": "x", "messages": [{"role": "user", "content": "hi"}]})
                          .encode())
    assert chat.prompt is None and chat.extra_body == {"prompt": "x"}  # passed on, as any unknown field
    assert not isinstance(chat, TextCompletionRequest) and needs(chat) == ()
    with pytest.raises(InvalidRequest) as missing:
        decode_request(b'{"model": "m", "prompt": "x"}')
    assert missing.value.param == "messages"
    with pytest.raises(InvalidRequest):
        completion_request_from_dict([1])


# -- the rendering --------------------------------------------------------------------------------------


def test_whole_and_streamed_answers_follow_the_schema_and_agree() -> None:
    request, _, _ = completion({"prompt": "Say", "stream": True, "stream_options": {"include_usage": True}})
    chunks, whole = render(request, [TextDelta("Hello"), TextDelta(" there"), Usage(2, 3), Finish("length")])
    for chunk in chunks:
        validate(chunk, chunk=True)
    validate(whole)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole["choices"][0]["text"]
    assert whole["choices"] == [{"text": "Hello there", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert whole["object"] == "text_completion" and whole["id"].startswith("cmpl-")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3,
                                                                   "total_tokens": 5}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "length"]


def test_echo_writes_the_prompt_first() -> None:
    request, echo, prompts = completion({"prompt": "Say", "echo": True})
    chunks, whole = render(request, [TextDelta(" hi"), Finish("stop")], echo=echo, prompts=prompts)
    assert [c["choices"][0]["text"] for c in chunks] == ["Say", " hi", ""]
    assert whole["choices"][0]["text"] == "Say hi"
    assert "usage" not in whole  # none was reported: none is made up


def test_a_choice_without_a_finish_is_closed_and_odd_reasons_are_mapped() -> None:
    request, _, _ = completion({"prompt": "x", "n": 2})
    chunks, whole = render(request, [TextDelta("a"), Finish("tool_calls")])
    assert [c["finish_reason"] for c in whole["choices"]] == ["stop", "stop"]
    assert [c["choices"][0]["index"] for c in chunks] == [0, 0, 1]


def test_an_error_after_the_start_is_the_openai_error_object() -> None:
    request, _, _ = completion({"prompt": "x"})
    rendering = CompletionRendering(request, "cmpl-1", 1, "m")
    name, payload = rendering.error_frame(UpstreamError("it broke"))
    assert name is None and payload["error"]["type"] and "it broke" in payload["error"]["message"]


# -- OpenAI-compatible targets ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_passes_the_prompt_to_the_completions_endpoint(openai_fake: OpenAIFake, stream: bool) -> None:
    request, _, _ = completion({"model": "fake-text", "prompt": "Tell me", "stream": stream, "echo": True,
                                "stop": ["zzz"], "top_k": 5})
    events = await run(fake_provider(openai_fake), request)
    assert events.text == DEFAULT_ANSWER and events.finish_reason == "stop"
    assert events.usage is not None and events.usage.completion_tokens > 0
    body = openai_fake.completion_bodies[-1]
    assert body["prompt"] == "Tell me" and body["max_tokens"] == 16 and body["stop"] == ["zzz"]
    assert body["top_k"] == 5 and "echo" not in body and "messages" not in body
    assert body.get("stream_options") == ({"include_usage": True} if stream else None)
    assert openai_fake.bodies == [] and openai_fake.violations == []  # nothing went to /chat/completions


async def test_a_cut_answer_finishes_with_length(openai_fake: OpenAIFake) -> None:
    request, _, _ = completion({"model": "fake-text", "prompt": "Tell me", "max_tokens": 2, "stream": True})
    events = await run(fake_provider(openai_fake), request)
    assert events.finish_reason == "length" and events.text == " ".join(DEFAULT_ANSWER.split(" ")[:2])


async def test_several_prompts_number_their_choices_as_openai_does(openai_fake: OpenAIFake) -> None:
    request, echo, prompts = completion({"model": "fake-text", "prompt": ["echo:one", "echo:two"], "n": 2,
                                         "echo": True})
    provider = fake_provider(openai_fake)
    chained = chain_prompts(request, prompts, lambda r: provider.open(r, transcript=Transcript()))
    events = [event async for event in chained]
    _, whole = render(request, events, echo=echo, prompts=prompts)
    validate(whole)
    assert [(c["index"], c["text"]) for c in whole["choices"]] == [
        (0, "echo:oneone"), (1, "echo:oneone"), (2, "echo:twotwo"), (3, "echo:twotwo")]
    usages = [event for event in events if isinstance(event, Usage)]
    assert len(usages) == 1 and usages[0].prompt_tokens == 2  # one per prompt, summed
    assert [b["prompt"] for b in openai_fake.completion_bodies] == ["echo:one", "echo:two"]


# -- the router ---------------------------------------------------------------------------------------


async def test_a_web_chat_target_never_gets_a_prompt(openai_fake: OpenAIFake) -> None:
    WebChat.calls = []
    r = router(Target(WebChat, "web"), Target(fake_provider(openai_fake), "fake-text"))
    request, _, _ = completion({"prompt": "Tell me"})
    events = await run(r, request)
    assert events.text == DEFAULT_ANSWER and WebChat.calls == []
    assert openai_fake.completion_bodies[-1]["model"] == "fake-text"


async def test_a_route_of_web_chats_only_is_a_400_naming_prompt() -> None:
    WebChat.calls = []
    request, _, _ = completion({"prompt": "Tell me"})
    with pytest.raises(UnsupportedFeature) as caught:
        await run(router(Target(WebChat, "web")), request)
    assert caught.value.param == "prompt" and caught.value.status == 400 and WebChat.calls == []


async def test_falls_back_before_any_text(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_503"
    async with OpenAIFake() as good:
        r = router(Target(fake_provider(openai_fake, "Failing"), "fake-text"),
                   Target(fake_provider(good, "Working"), "fake-text"))
        request, _, _ = completion({"prompt": "Tell me", "stream": True})
        events = await run(r, request)
        assert events.text == DEFAULT_ANSWER and events.provider_info is not None
        assert events.provider_info.provider == "Working" and len(openai_fake.completion_bodies) == 1


async def test_an_interrupted_answer_is_continued_from_the_prompt_never_repeated(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "mid_stream_error"
    async with OpenAIFake() as second:
        second.answer = " and the rest."
        r = router(Target(fake_provider(openai_fake, "Breaks"), "fake-text"),
                   Target(fake_provider(second, "Continues", prefill=True), "fake-text"))
        request, _, _ = completion({"prompt": "Tell me", "stream": True})
        events = await run(r, request)
        delivered = second.completion_bodies[-1]["prompt"].removeprefix("Tell me")
        assert delivered and DEFAULT_ANSWER.startswith(delivered)  # what reached the caller, once
        assert second.completion_bodies[-1]["prompt"] == "Tell me" + delivered
        assert events.text == delivered + " and the rest."
        assert [f.delivered for f in events.fallbacks] == [len(delivered)]


async def test_without_a_target_that_continues_the_partial_text_is_kept(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "mid_stream_error"
    async with OpenAIFake() as second:
        r = router(Target(fake_provider(openai_fake, "Breaks"), "fake-text"),
                   Target(fake_provider(second, "Restarts"), "fake-text"))
        request, _, _ = completion({"prompt": "Tell me", "stream": True})
        with pytest.raises(StreamInterrupted) as caught:
            await run(r, request)
        assert caught.value.partial_text and DEFAULT_ANSWER.startswith(caught.value.partial_text)
        assert second.completion_bodies == []


# -- the embedded model ---------------------------------------------------------------------------------


async def test_the_embedded_model_refuses_suffix_by_name() -> None:
    request, _, _ = completion({"model": "local", "prompt": "x", "suffix": "y"})
    with pytest.raises(InvalidRequest) as caught:
        await run(Local, request)
    assert caught.value.param == "suffix"


@pytest.mark.model
async def test_the_embedded_model_completes_a_raw_prompt() -> None:
    request, _, _ = completion({"model": "local", "prompt": "The capital of France is", "max_tokens": 6,
                                "temperature": 0, "stream": True})
    events = await run(Local, request)
    assert events.text.strip() and events.usage is not None
    assert 1 <= events.usage.completion_tokens <= 6
    assert events.finish_reason in ("stop", "length")
    # the prompt's own tokens, no chat template (whose default system prompt alone is dozens)
    assert events.usage.prompt_tokens <= 10
    again = await run(Local, request)
    assert again.text == events.text  # greedy: the same answer


@pytest.mark.model
async def test_the_embedded_model_stops_at_max_tokens_and_stop_strings() -> None:
    request, _, _ = completion({"model": "local", "prompt": "1, 2, 3, 4,", "max_tokens": 3, "seed": 1})
    events = await run(Local, request)
    assert events.usage is not None and events.usage.completion_tokens <= 3
    long, _, _ = completion({"model": "local", "prompt": "1, 2, 3, 4,", "max_tokens": 24, "temperature": 0})
    first = await run(Local, long)
    assert len(first.text) > 2
    stop = first.text[len(first.text) // 2:][:2]
    cut, _, _ = completion({"model": "local", "prompt": "1, 2, 3, 4,", "max_tokens": 24, "temperature": 0,
                            "stop": [stop]})
    stopped = await run(Local, cut)
    assert stop not in stopped.text and first.text.startswith(stopped.text) and stopped.finish_reason == "stop"
