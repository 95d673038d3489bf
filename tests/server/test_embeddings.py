"""Embeddings (``POST /v1/embeddings``) through providers and the router.

- :func:`decode_embedding_request` reads the four input shapes, keeps unknown fields for the
  upstream, and names the field of every mistake.
- OpenAI-compatible targets get the client's fields at ``{base}/embeddings`` (``dimensions``
  too); a service that ignores ``dimensions`` is refused by name, not passed off as an answer.
- The router uses only targets with the ``embeddings`` capability (a web chat never gets the
  request), falls back past a failing one, leaves an invalid request alone, and answers 400
  naming ``model`` when no target of the route embeds.
- The answer validates against OpenAI's published ``CreateEmbeddingResponse``; base64 is
  little-endian float32 and decodes to the float answer.
- The embedded model (``model`` tier) answers with normalized vectors of its own size.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import AsyncIterator
from functools import cache
from typing import Any, ClassVar

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from patchbay.chat.embeddings import (
    EmbeddingRequest,
    EmbeddingResult,
    decode_base64_vector,
    decode_embedding_request,
    embedding_request_from_dict,
    embedding_request_schema,
    to_response,
)
from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import (
    AllProvidersFailed,
    InvalidRequest,
    ModelNotSupported,
    UnsupportedFeature,
)
from patchbay.events import StreamEvent, TextDelta
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.providers.capabilities import Capabilities
from patchbay.providers.local.model import Local
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import MemoryStateStore, RetryPolicy, Router, Target
from patchbay.server.embeddings import EmbeddingsEndpoint
from patchbay.server.metrics import GatewayMetrics
from patchbay.timeouts import Timeout
from tests.replicas.openai_fake import OpenAIFake
from tests.support.paths import SCHEMAS


@cache
def _registry() -> Registry:
    document = json.loads(SCHEMAS.read_text())
    return Registry().with_resource("schemas.json", Resource.from_contents(document, DRAFT202012))


def validate(name: str, document: Any) -> None:
    """``document`` against OpenAI's published schema ``name`` (AssertionError naming the breaks)."""
    validator = Draft202012Validator({"$ref": f"schemas.json#/components/schemas/{name}"}, registry=_registry())
    errors = [f"{list(error.absolute_path)}: {error.message[:200]}" for error in validator.iter_errors(document)]
    assert not errors, errors


def fake_provider(fake: OpenAIFake, name: str = "Fake", **options: Any) -> type[OpenAICompatible]:
    return OpenAICompatible.configure(name, base_url=fake.api_base, models=["fake-embed"], **options)


def router(*targets: Target, attempts: int = 1) -> type[Router]:
    r = Router.configure({"emb": list(targets)}, state=MemoryStateStore(), retry=RetryPolicy(attempts=attempts))

    async def no_sleep(seconds: float) -> None:
        """No backoff waits in these tests."""

    r.sleep = no_sleep  # type: ignore[assignment]
    return r


class WebChat(AsyncGeneratorProvider):
    """A text-only web chat: no embeddings capability; records every call it gets."""

    name = "WebChat"
    text_only = True
    features = Capabilities.emulated_output()
    models: ClassVar[list[str]] = ["web"]
    calls: ClassVar[list[Any]] = []

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        cls.calls.append(request)
        yield TextDelta("web answer")

    @classmethod
    async def embed(cls, request: EmbeddingRequest, call: Call) -> EmbeddingResult:
        cls.calls.append(request)
        return EmbeddingResult([[1.0]], "web")


# -- the request --------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, inputs", [
    ("one text", ["one text"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
])
def test_the_four_input_shapes(given: Any, inputs: list[Any]) -> None:
    request = decode_embedding_request(json.dumps({"model": "m", "input": given}).encode())
    assert request.inputs == inputs and request.encoding_format == "float"


def test_unknown_fields_are_kept_for_the_upstream() -> None:
    request = embedding_request_from_dict({"model": "m", "input": "x", "dimensions": 4.0, "truncate": "END",
                                           "extra_body": {"priority": 1}})
    assert request.dimensions == 4 and request.extra_body == {"truncate": "END", "priority": 1}
    assert request.upstream_body("up") == {"model": "up", "input": "x", "dimensions": 4, "truncate": "END",
                                           "priority": 1}


MISTAKES: list[tuple[dict[str, Any], str]] = [
    ({"input": "x"}, "model"),
    ({"model": "", "input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": ""}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": {"text": "x"}}, "input"),
    ({"model": "m", "input": ["a", 1]}, "input[1]"),
    ({"model": "m", "input": ["a", ""]}, "input[1]"),
    ({"model": "m", "input": [1, -2]}, "input[1]"),
    ({"model": "m", "input": [1, "a"]}, "input[1]"),
    ({"model": "m", "input": [[1], []]}, "input[1]"),
    ({"model": "m", "input": [[1], [2, True]]}, "input[1][1]"),
    ({"model": "m", "input": ["x"] * 2049}, "input"),
    ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions"),
    ({"model": "m", "input": "x", "user": 7}, "user"),
    ({"model": "m", "input": "x", "extra_body": []}, "extra_body"),
]


@pytest.mark.parametrize("body, param", MISTAKES)
def test_every_mistake_names_its_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_embedding_request(json.dumps(body).encode())
    assert caught.value.param == param and caught.value.status == 400


def test_the_published_schema_refuses_those_mistakes_and_takes_what_is_accepted() -> None:
    validator = Draft202012Validator(embedding_request_schema())
    assert [body for body, _ in MISTAKES if validator.is_valid(body)] == []
    for given in ("x", ["a", "b"], [0, 5], [[1], [2, 3]]):
        body = {"model": "m", "input": given, "encoding_format": "base64", "dimensions": 3, "user": "u", "k": 1}
        assert validator.is_valid(body)
        embedding_request_from_dict(body)  # and the decoder takes it


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b"\xff"])
def test_a_body_that_is_not_a_json_object_is_a_clear_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        decode_embedding_request(body)
    assert caught.value.status == 400 and "\n" not in caught.value.message


# -- the answer ---------------------------------------------------------------------------------------


def test_the_answer_follows_openais_schema_and_base64_is_little_endian_float32() -> None:
    vectors = [[0.5, -0.25, 1.0], [3.0e-8, 0.0, -1.5]]
    result = EmbeddingResult(vectors, "m", 7)
    floats = to_response(result)
    validate("CreateEmbeddingResponse", floats)
    assert [item["embedding"] for item in floats["data"]] == vectors
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7, "cost": 0.0}
    encoded = to_response(result, "base64")
    for item, vector in zip(encoded["data"], vectors, strict=True):
        raw = base64.b64decode(item["embedding"])
        assert len(raw) == 4 * len(vector)
        assert list(struct.unpack(f"<{len(vector)}f", raw)) == [struct.unpack("<f", struct.pack("<f", x))[0]
                                                               for x in vector]
        assert decode_base64_vector(item["embedding"]) == pytest.approx(vector, rel=1e-6)


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"abc").decode()])
def test_a_broken_base64_vector_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        decode_base64_vector(text)


# -- OpenAI-compatible targets ------------------------------------------------------------------------


async def test_passes_the_request_on_and_reads_the_vectors(openai_fake: OpenAIFake) -> None:
    provider = fake_provider(openai_fake)
    request = embedding_request_from_dict({"model": "fake-embed", "input": ["first", "second"], "user": "u1",
                                           "encoding_format": "base64", "truncate": "END"})
    result = await provider.create_embedding(request)
    assert result.vectors == [OpenAIFake.vector("first", 8), OpenAIFake.vector("second", 8)]
    assert result.provider == provider.name and result.model == "fake-embed" and result.prompt_tokens == 2
    body = openai_fake.embedding_bodies[-1]
    # floats are asked for whatever the client wants (base64 is encoded here), the rest as given
    assert body == {"model": "fake-embed", "input": ["first", "second"], "user": "u1", "truncate": "END"}
    assert openai_fake.violations == []


async def test_token_ids_go_upstream_as_given(openai_fake: OpenAIFake) -> None:
    request = embedding_request_from_dict({"model": "fake-embed", "input": [[5, 6], [7]]})
    result = await fake_provider(openai_fake).create_embedding(request)
    assert openai_fake.embedding_bodies[-1]["input"] == [[5, 6], [7]]
    assert result.vectors == [OpenAIFake.vector([5, 6], 8), OpenAIFake.vector([7], 8)]


async def test_an_upstream_answering_in_base64_is_read_too(openai_fake: OpenAIFake) -> None:
    request = embedding_request_from_dict({"model": "fake-embed", "input": "x",
                                           "extra_body": {"encoding_format": "base64"}})
    result = await fake_provider(openai_fake).create_embedding(request)
    assert result.vectors == [OpenAIFake.vector("x", 8)]


async def test_dimensions_are_passed_on(openai_fake: OpenAIFake) -> None:
    request = embedding_request_from_dict({"model": "fake-embed", "input": "x", "dimensions": 5})
    result = await fake_provider(openai_fake).create_embedding(request)
    assert openai_fake.embedding_bodies[-1]["dimensions"] == 5
    assert [len(v) for v in result.vectors] == [5]


async def test_a_service_that_ignores_dimensions_is_refused_by_name(openai_fake: OpenAIFake) -> None:
    openai_fake.honours_dimensions = False
    request = embedding_request_from_dict({"model": "fake-embed", "input": "x", "dimensions": 5})
    with pytest.raises(UnsupportedFeature) as caught:
        await fake_provider(openai_fake).create_embedding(request)
    assert caught.value.param == "dimensions" and caught.value.status == 400


async def test_upstream_errors_keep_their_meaning(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_400"
    request = embedding_request_from_dict({"model": "fake-embed", "input": "x"})
    with pytest.raises(InvalidRequest) as caught:
        await fake_provider(openai_fake).create_embedding(request)
    assert caught.value.provider == "Fake" and caught.value.model == "fake-embed"


async def test_a_rejected_key_is_banned_and_the_next_one_used(openai_fake: OpenAIFake) -> None:
    openai_fake.api_key = "good-key"
    provider = fake_provider(openai_fake, "Keys", api_keys=["bad-key", "good-key"])
    request = embedding_request_from_dict({"model": "fake-embed", "input": "x"})
    result = await provider.create_embedding(request)
    assert len(result.vectors) == 1 and len(openai_fake.embedding_bodies) == 2


async def test_a_provider_without_embeddings_refuses_at_once() -> None:
    WebChat.calls = []
    with pytest.raises(UnsupportedFeature) as caught:
        await WebChat.create_embedding(embedding_request_from_dict({"model": "web", "input": "x"}))
    assert caught.value.param == "model" and WebChat.calls == []


# -- the router ---------------------------------------------------------------------------------------


async def test_falls_back_past_a_failing_target(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_503"
    async with OpenAIFake() as good:
        failing, working = fake_provider(openai_fake, "Failing"), fake_provider(good, "Working")
        r = router(Target(failing, "fake-embed"), Target(working, "fake-embed"))
        result = await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "hello"}))
        assert result.provider == "Working" and result.vectors == [OpenAIFake.vector("hello", 8)]
        assert len(openai_fake.embedding_bodies) == 1 and len(good.embedding_bodies) == 1
        assert good.embedding_bodies[0]["model"] == "fake-embed"  # the target's model, not the route's
        health = await r.health()
        assert health["Failing/fake-embed"].failures == 1 and health["Working/fake-embed"].successes == 1


async def test_retries_a_target_that_fails_once(openai_fake: OpenAIFake) -> None:
    openai_fake.fail_next, openai_fake.fail_status = 1, 500
    r = router(Target(fake_provider(openai_fake), "fake-embed"), attempts=2)
    result = await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "hello"}))
    assert len(result.vectors) == 1 and len(openai_fake.embedding_bodies) == 2


async def test_every_target_failing_lists_each_attempt(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_503"
    r = router(Target(fake_provider(openai_fake, "A"), "fake-embed"), Target(fake_provider(openai_fake, "B"),
                                                                             "fake-embed"))
    with pytest.raises(AllProvidersFailed) as caught:
        await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "x"}))
    assert [a.provider for a in caught.value.attempts] == ["A", "B"]


async def test_an_invalid_request_is_not_passed_on(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_400"
    async with OpenAIFake() as second:
        r = router(Target(fake_provider(openai_fake, "A"), "fake-embed"), Target(fake_provider(second, "B"),
                                                                                 "fake-embed"))
        with pytest.raises(InvalidRequest):
            await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "x"}))
        assert second.embedding_bodies == []


async def test_a_target_ignoring_dimensions_leaves_it_to_the_next(openai_fake: OpenAIFake) -> None:
    openai_fake.honours_dimensions = False
    async with OpenAIFake() as honest:
        r = router(Target(fake_provider(openai_fake, "Ignores"), "fake-embed"),
                   Target(fake_provider(honest, "Honours"), "fake-embed"))
        result = await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "x",
                                                                       "dimensions": 3}))
        assert result.provider == "Honours" and [len(v) for v in result.vectors] == [3]


async def test_a_web_chat_target_never_gets_an_embeddings_request(openai_fake: OpenAIFake) -> None:
    WebChat.calls = []
    r = router(Target(WebChat, "web"), Target(fake_provider(openai_fake), "fake-embed"))
    result = await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "x"}))
    assert result.provider == "Fake" and WebChat.calls == []


async def test_a_route_without_an_embedding_target_is_a_400_naming_model() -> None:
    WebChat.calls = []
    r = router(Target(WebChat, "web"))
    with pytest.raises(UnsupportedFeature) as caught:
        await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "x"}))
    assert caught.value.status == 400 and caught.value.param == "model" and "emb" in caught.value.message
    assert WebChat.calls == []


async def test_configuration_can_say_a_service_does_not_embed(openai_fake: OpenAIFake) -> None:
    chat_only = fake_provider(openai_fake, "ChatOnly", capabilities={"embeddings": "none"})
    r = router(Target(chat_only, "fake-embed"))
    with pytest.raises(UnsupportedFeature):
        await r.create_embedding(embedding_request_from_dict({"model": "emb", "input": "x"}))
    assert openai_fake.embedding_bodies == []


async def test_a_router_serves_as_a_target_of_another_under_the_name_it_is_given(openai_fake: OpenAIFake) -> None:
    inner = Router.configure({"inner-emb": [Target(fake_provider(openai_fake), "fake-embed")]}, name="Inner",
                             state=MemoryStateStore())
    outer = router(Target(inner, "inner-emb"))
    result = await outer.create_embedding(embedding_request_from_dict({"model": "emb", "input": "x"}))
    assert result.provider == "Fake" and openai_fake.embedding_bodies[-1]["model"] == "fake-embed"


async def test_an_unknown_route_is_model_not_supported() -> None:
    r = router(Target(WebChat, "web"))
    with pytest.raises(ModelNotSupported):
        await r.create_embedding(embedding_request_from_dict({"model": "nope", "input": "x"}))


# -- the endpoint's body ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_the_endpoint_body_round_trips(openai_fake: OpenAIFake, encoding: str) -> None:
    r = router(Target(fake_provider(openai_fake), "fake-embed"))
    body = json.dumps({"model": "emb", "input": ["a", "b"], "encoding_format": encoding}).encode()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    endpoint = EmbeddingsEndpoint(r, limits=Timeout.of(10.0), metrics=GatewayMetrics(10))
    tokens = await endpoint(body, _no_receive, send)  # type: ignore[arg-type]
    head, answer = sent[0], sent[1]["body"]
    document = json.loads(answer)
    assert document["object"] == "list" and document["model"] == "fake-embed"
    vectors = [item["embedding"] for item in document["data"]]
    if encoding == "base64":
        vectors = [decode_base64_vector(v) for v in vectors]
        document["data"] = [{**item, "embedding": v} for item, v in zip(document["data"], vectors, strict=True)]
    validate("CreateEmbeddingResponse", document)
    assert vectors == [OpenAIFake.vector("a", 8), OpenAIFake.vector("b", 8)]  # float32 both ways: exact
    assert (b"x-patchbay-provider", b"Fake") in head["headers"]
    assert tokens.tokens == document["usage"]["prompt_tokens"]  # what the rate limits count


async def _no_receive() -> dict[str, Any]:
    raise AssertionError("the embeddings endpoint reads nothing more than its body")


# -- the embedded model ---------------------------------------------------------------------------------


def _norm(vector: list[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in vector))


@pytest.mark.model
async def test_the_embedded_model_answers_normalized_vectors_of_its_size() -> None:
    request = embedding_request_from_dict({"model": "local", "input": ["The cat sat on the mat.",
                                                                       "Stock prices fell sharply today.",
                                                                       "The cat sat on the mat."]})
    result = await Local.create_embedding(request)
    size = int(Local.model_for(Local.resolve_model("local"))._embedder.n_embd())
    assert [len(v) for v in result.vectors] == [size] * 3
    assert all(abs(_norm(v) - 1.0) < 1e-5 for v in result.vectors)
    first, other, again = result.vectors
    assert max(abs(a - b) for a, b in zip(first, again, strict=True)) < 1e-6  # the same text: the same vector
    assert max(abs(a - b) for a, b in zip(first, other, strict=True)) > 1e-3  # another text: another vector
    assert result.prompt_tokens > 0 and result.provider == "Local"
    # ...and the same vector in a request of its own (it depends on its input only)
    alone = await Local.create_embedding(embedding_request_from_dict({"model": "local",
                                                                      "input": "The cat sat on the mat."}))
    assert max(abs(a - b) for a, b in zip(first, alone.vectors[0], strict=True)) < 1e-6


@pytest.mark.model
async def test_the_embedded_model_takes_token_ids_and_its_own_size_only() -> None:
    size = len((await Local.create_embedding(embedding_request_from_dict({"model": "local", "input": "x"})))
               .vectors[0])
    by_ids = await Local.create_embedding(embedding_request_from_dict({"model": "local", "input": [[28, 29, 30]]}))
    assert len(by_ids.vectors[0]) == size
    same = await Local.create_embedding(embedding_request_from_dict({"model": "local", "input": "x",
                                                                     "dimensions": size}))
    assert len(same.vectors[0]) == size
    with pytest.raises(InvalidRequest) as caught:
        await Local.create_embedding(embedding_request_from_dict({"model": "local", "input": "x",
                                                                  "dimensions": 8}))
    assert caught.value.param == "dimensions" and str(size) in caught.value.message
    with pytest.raises(InvalidRequest) as unknown:
        await Local.create_embedding(embedding_request_from_dict({"model": "local", "input": [[10**9]]}))
    assert unknown.value.param == "input[0][0]"
