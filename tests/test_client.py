"""patchbay.Client and AsyncClient: the openai SDK's call shape, in-process, over any provider."""

from __future__ import annotations

from pathlib import Path

import pytest

import patchbay
from patchbay.errors import InvalidRequest, ModelNotSupported
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import Target
from tests.replicas.base import split_deltas
from tests.replicas.openai_fake import OpenAIFake
from tests.replicas.threaded import threaded

HELLO = [{"role": "user", "content": "Hello"}]


def fake_client(fake: OpenAIFake) -> patchbay.AsyncClient:
    provider = OpenAICompatible.configure("fake", base_url=fake.api_base)
    return patchbay.AsyncClient(routes={"small": [Target(provider, "fake-small")]})


async def test_whole_answer_has_the_sdk_shape(openai_fake: OpenAIFake) -> None:
    client = fake_client(openai_fake)
    answer = await client.chat.completions.create(model="small", messages=HELLO, max_tokens=30)
    assert isinstance(answer, patchbay.ChatCompletion)
    assert answer.object == "chat.completion"
    assert answer.id.startswith("chatcmpl-") and answer.created > 0
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == openai_fake.answer
    assert answer.choices[0].finish_reason == "stop"
    assert answer.provider == "fake" and answer.model == "fake-small"
    assert answer.usage is not None and answer.usage.total_tokens == (
        answer.usage.prompt_tokens + answer.usage.completion_tokens)
    assert openai_fake.last_body["max_tokens"] == 30
    assert openai_fake.last_body["stream"] is False  # a whole answer is asked for as one
    assert answer.model_dump()["choices"][0]["message"]["content"] == openai_fake.answer


async def test_streamed_chunks_have_the_sdk_shape(openai_fake: OpenAIFake) -> None:
    client = fake_client(openai_fake)
    stream = await client.chat.completions.create(model="small", messages=HELLO, stream=True,
                                                  stream_options={"include_usage": True})
    assert isinstance(stream, patchbay.AsyncChunkStream)
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == openai_fake.answer
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert {c.provider for c in chunks} == {"fake"}


async def test_stop_string_split_across_chunks_is_cut(openai_fake: OpenAIFake) -> None:
    deltas = split_deltas(openai_fake.answer, 6)
    boundary = len(deltas[0]) + len(deltas[1])
    stop = openai_fake.answer[boundary - 2: boundary + 2]  # two characters on each side of a boundary
    client = fake_client(openai_fake)
    stream = await client.chat.completions.create(model="small", messages=HELLO, stream=True, stop=[stop])
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == openai_fake.answer[: boundary - 2]
    answer = await client.chat.completions.create(model="small", messages=HELLO, stop=stop)
    assert answer.choices[0].message.content == openai_fake.answer[: boundary - 2]
    assert answer.choices[0].finish_reason == "stop"
    assert openai_fake.last_body["stop"] == stop  # the service is asked to stop too


async def test_closing_a_stream_early_closes_the_upstream(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "stall"
    client = fake_client(openai_fake)
    stream = await client.chat.completions.create(model="small", messages=HELLO, stream=True)
    async for chunk in stream:
        assert chunk.choices[0].delta.content
        break
    await stream.close()
    await openai_fake.wait_until(lambda: openai_fake.open_streams == 0, timeout=5)


async def test_models_list_and_retrieve(openai_fake: OpenAIFake) -> None:
    client = fake_client(openai_fake)
    models = await client.models.list()
    assert [m.id for m in models] == ["small"]
    assert (await client.models.retrieve("small")).id == "small"
    with pytest.raises(ModelNotSupported, match="small"):
        await client.models.retrieve("large")


async def test_bad_arguments_are_named() -> None:
    client = patchbay.AsyncClient(patchbay.providers.Local)
    with pytest.raises(InvalidRequest, match="temperature"):
        await client.chat.completions.create(model="x", messages=HELLO, temperature=7)
    with pytest.raises(InvalidRequest, match="messages"):
        await client.chat.completions.create(model="x", messages=[])
    with pytest.raises(InvalidRequest, match="model"):
        await client.chat.completions.create(messages=HELLO)


def test_sync_client_whole_and_streamed() -> None:
    with threaded(OpenAIFake()) as fake:
        provider = OpenAICompatible.configure("fake", base_url=fake.api_base)
        client = patchbay.Client(provider)
        answer = client.chat.completions.create(model="fake-small", messages=HELLO)
        assert isinstance(answer, patchbay.ChatCompletion)
        assert answer.choices[0].message.content == fake.answer
        with client.chat.completions.create(model="fake-small", messages=HELLO, stream=True) as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == fake.answer


def test_sync_client_unknown_model_fails_at_once(tmp_path: Path) -> None:
    client = patchbay.Client(routes={"only": ["Local"]})
    with pytest.raises(ModelNotSupported, match="only"):
        client.chat.completions.create(model="other", messages=HELLO, stream=True)


@pytest.mark.model
def test_default_client_is_the_embedded_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path))
    monkeypatch.delenv("PATCHBAY_CONFIG", raising=False)
    client = patchbay.Client()
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]
    answer = client.chat.completions.create(model="smollm2-135m-instruct", messages=HELLO, max_tokens=6)
    assert answer.provider == "Local"
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens <= 6


async def test_credentials_given_to_create_are_call_options_never_request_fields(openai_fake: OpenAIFake) -> None:
    provider = OpenAICompatible.configure("KeyCheck", base_url=openai_fake.api_base, models=["fake-small"])
    client = patchbay.AsyncClient(provider)
    await client.chat.completions.create(model="fake-small", messages=HELLO, api_key="sk-given-for-this-call")
    sent = openai_fake.requests_to("/v1/chat/completions")[-1]
    assert sent.headers["authorization"] == "Bearer sk-given-for-this-call"
    assert b"sk-given-for-this-call" not in sent.body  # a credential, not a body field
    with pytest.raises(InvalidRequest) as info:
        await client.chat.completions.create(model="fake-small", messages=HELLO, extra_headers={"X-Key": "secret"})
    assert info.value.param == "extra_headers"
