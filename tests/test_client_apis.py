"""``patchbay.Client`` speaks the Messages and Responses APIs in-process: the same conversions as
the server's endpoints, answers as those APIs' JSON (dicts), events when streamed, and
``previous_response_id`` chaining within one client."""

from __future__ import annotations

import pytest

from patchbay import AsyncClient, Client
from patchbay.chat.embeddings import decode_base64_vector
from patchbay.errors import InvalidRequest, ResourceNotFound
from patchbay.routing import Router, Target
from patchbay.settings import Settings
from tests.replicas.openai_fake import OpenAIFake
from tests.routing.test_router import script

HELLO = [{"role": "user", "content": "Hello"}]


def client_for(kind: type[Client] | type[AsyncClient]) -> Client | AsyncClient:
    provider = script("Fake", default=(["Hel", "lo!"], None))
    return kind(Router.configure({"small": [Target(provider)]}))


def test_messages_whole_and_streamed_agree() -> None:
    client = client_for(Client)
    assert isinstance(client, Client)
    message = client.messages.create(model="small", max_tokens=20, messages=HELLO)
    assert isinstance(message, dict)
    assert message["type"] == "message" and message["content"] == [{"type": "text", "text": "Hello!"}]
    assert message["stop_reason"] == "end_turn"
    events = list(client.messages.create(model="small", max_tokens=20, messages=HELLO, stream=True))
    types = [event["type"] for event in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "Hello!"


def test_messages_reads_fields_as_anthropic_does() -> None:
    client = client_for(Client)
    with pytest.raises(InvalidRequest) as caught:
        client.messages.create(model="small", messages=HELLO)
    assert caught.value.param == "max_tokens"


async def test_async_responses_chain_and_retrieve() -> None:
    provider = script("Fake", default=(["Hel", "lo!"], None))
    client = AsyncClient(Router.configure({"small": [Target(provider)]}))
    first = await client.responses.create(model="small", input="Remember 7")
    assert isinstance(first, dict) and first["status"] == "completed"
    assert first["output"][0]["content"][0]["text"] == "Hello!"
    assert await client.responses.retrieve(first["id"]) == first
    stream = await client.responses.create(model="small", input="Which?", previous_response_id=first["id"],
                                           stream=True)
    assert not isinstance(stream, dict)
    events = [event async for event in stream]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    second = events[-1]["response"]
    assert [(m["role"], m["content"]) for m in provider.calls[-1]] == [
        ("user", "Remember 7"), ("assistant", "Hello!"), ("user", "Which?")]  # the stored history first
    assert await client.responses.retrieve(second["id"]) == second
    with pytest.raises(ResourceNotFound):
        await client.responses.retrieve("resp_unknown")


async def test_a_response_made_without_store_cannot_be_continued() -> None:
    client = client_for(AsyncClient)
    assert isinstance(client, AsyncClient)
    first = await client.responses.create(model="small", input="Hi", store=False)
    assert isinstance(first, dict)
    with pytest.raises(InvalidRequest) as caught:
        await client.responses.create(model="small", input="Again", previous_response_id=first["id"])
    assert caught.value.param == "previous_response_id"


async def test_embeddings_through_the_client(openai_fake: OpenAIFake) -> None:
    settings = Settings(providers={"fake": {"base_url": openai_fake.api_base, "models": ["m"]}},
                        routes={"small": ["fake/m"]})
    client = AsyncClient(settings.build_router())
    answer = await client.embeddings.create(model="small", input=["one", "two"])
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert answer["data"][0]["embedding"] == openai_fake.vector("one", len(answer["data"][0]["embedding"]))
    packed = await client.embeddings.create(model="small", input="one", encoding_format="base64")
    assert decode_base64_vector(packed["data"][0]["embedding"]) == pytest.approx(answer["data"][0]["embedding"])
