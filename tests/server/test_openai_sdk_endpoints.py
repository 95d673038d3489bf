"""The real openai SDK against ``patchbay serve`` for embeddings and legacy completions: float
and base64 vectors, whole and streamed completions, a list of prompts, and the 400 that names
the field when a route has no target that can serve the endpoint."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
import pytest_asyncio

from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]


@pytest_asyncio.fixture
async def sdk(openai_fake: OpenAIFake, tmp_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    config = {"server": {"web_ui": False},
              "router": {"retries": 1, "first_byte_timeout": 5.0, "idle_timeout": 5.0, "timeout": 20.0},
              "providers": {"fake": {"base_url": openai_fake.api_base, "models": ["m"]}},
              "routes": {"small": ["fake/m"], "web-only": ["Liaobots"]}}
    async with GatewayProcess(config, tmp_path) as gateway, \
            openai.AsyncOpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0, timeout=30) as client:
        yield client


async def test_embeddings_float_and_base64(sdk: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    answer = await sdk.embeddings.create(model="small", input=["one", "two"], encoding_format="float")
    assert [item.index for item in answer.data] == [0, 1]
    size = len(answer.data[0].embedding)
    assert answer.data[1].embedding == openai_fake.vector("two", size)
    packed = await sdk.embeddings.create(model="small", input="one", encoding_format="base64")
    raw = base64.b64decode(packed.data[0].embedding)  # type: ignore[arg-type]
    assert list(struct.unpack(f"<{size}f", raw)) == pytest.approx(answer.data[0].embedding, abs=1e-6)
    default = await sdk.embeddings.create(model="small", input="one")  # the SDK asks for base64 and decodes it
    assert default.data[0].embedding == pytest.approx(answer.data[0].embedding, abs=1e-6)


async def test_completions_whole_streamed_and_listed(sdk: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    whole = await sdk.completions.create(model="small", prompt="Once upon", max_tokens=50)
    assert whole.object == "text_completion" and whole.choices[0].text == openai_fake.answer
    assert openai_fake.completion_bodies[-1]["prompt"] == "Once upon"
    echoed = await sdk.completions.create(model="small", prompt="Once upon", max_tokens=50, echo=True)
    assert echoed.choices[0].text == "Once upon" + openai_fake.answer
    stream = await sdk.completions.create(model="small", prompt=["A", "B"], max_tokens=50, stream=True)
    texts: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: openai_fake.answer, 1: openai_fake.answer}  # one answer per prompt, in order


async def test_a_route_without_such_a_target_is_a_400_naming_the_field(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.embeddings.create(model="web-only", input="one")
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.completions.create(model="web-only", prompt="x", max_tokens=5)
    assert caught.value.body["param"] == "prompt"  # type: ignore[index]
