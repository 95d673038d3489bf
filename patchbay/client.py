"""An OpenAI-style client that runs in-process: no server needed.

``client.chat.completions.create(model=..., messages=..., stream=...)`` and
``client.models.list()`` behave like the openai SDK's, and answer with objects of the same shape
(:mod:`patchbay.chat.response`). ``client.messages.create(...)`` (Anthropic's Messages API) and
``client.responses.create(...)`` (OpenAI's Responses API) take those APIs' own fields and answer
with their JSON as plain dicts: the whole message or response, or with ``stream=True`` its events
(each a dict with its ``type``). Behind them is any provider class: by default the router described
by the config file (see :mod:`patchbay.settings`), which with no file is the embedded model.

    client = patchbay.Client()
    answer = client.chat.completions.create(model="smollm2-135m-instruct",
                                            messages=[{"role": "user", "content": "Hi"}])
    print(answer.choices[0].message.content, answer.provider)

With the request log enabled (:func:`patchbay.requestlog.enable` or ``PATCHBAY_REQUEST_LOG=1``),
every exchange is recorded there, whole answers and streams alike.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from patchbay import requestlog
from patchbay.chat.anthropic import MessageRendering, decode_messages_request, message_id
from patchbay.chat.embeddings import embedding_request_from_dict, to_response
from patchbay.chat.rendering import Rendering, rendered_events, rendered_whole
from patchbay.chat.request import ChatCompletionRequest, request_from_kwargs
from patchbay.chat.response import (
    ChatCompletion,
    ChatCompletionChunk,
    Model,
    ModelList,
    complete,
    stream_chunks,
)
from patchbay.errors import InvalidRequest, ResourceNotFound
from patchbay.events import EventStream
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.providers.calls import find_model, model_list, open_stream
from patchbay.requestlog.responses import MemoryResponseStore, begin_response
from patchbay.sync import BlockingStream, run_sync
from patchbay.timeouts import UNSET, TimeoutTypes

__all__ = ["AsyncChunkStream", "AsyncClient", "ChunkStream", "Client", "EventDicts"]

ProviderType = type[AsyncGeneratorProvider]
#: Options of the openai SDK's ``create()`` that shape its HTTP request, not the chat request.
SDK_ONLY = ("extra_headers", "extra_query")
#: Seconds the client keeps a stored response for ``previous_response_id`` (as the server's default).
RESPONSES_TTL = 30 * 86_400.0


def _provider_for(provider: ProviderType | None, routes: Mapping[str, Sequence[Any]] | None,
                  config: str | Path | None) -> ProviderType:
    if provider is not None and routes is not None:
        raise TypeError("give either a provider or routes, not both")
    if provider is not None:
        return provider
    from patchbay.settings import load_settings

    settings = load_settings(config)
    if routes is not None:
        from dataclasses import replace

        settings = replace(settings, routes={name: list(targets) for name, targets in routes.items()})
    return settings.build_router()


class _Base:
    def __init__(self, provider: ProviderType | None = None, *, routes: Mapping[str, Sequence[Any]] | None = None,
                 config: str | Path | None = None, timeout: TimeoutTypes = UNSET, proxy: str | None = None) -> None:
        self.provider = _provider_for(provider, routes, config)
        self.timeout = timeout
        self.proxy = proxy
        #: Responses made with ``store`` (the default), for ``previous_response_id``: this client's own.
        self.response_store = MemoryResponseStore()
        self._attach()

    def _attach(self) -> None:
        """Make the ``chat`` and ``models`` resources (sync or async)."""
        raise NotImplementedError

    def _request(self, kwargs: dict[str, Any]) -> tuple[ChatCompletionRequest, dict[str, Any]]:
        """The request, and the options of the call itself: limits, proxy and credentials (never
        request fields, so never sent upstream in the body or kept in the request log)."""
        for name in SDK_ONLY:
            if name in kwargs:
                raise InvalidRequest(f"{name} is an HTTP option of the openai SDK; patchbay's client has no HTTP "
                                     "request to add it to (use extra_body for upstream fields)", param=name)
        transport = self._transport(kwargs)
        return request_from_kwargs(kwargs), transport

    def _transport(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's own options, taken out of ``kwargs``."""
        return {"timeout": kwargs.pop("timeout", self.timeout), "proxy": kwargs.pop("proxy", self.proxy),
                "auth": kwargs.pop("auth", None), "api_key": kwargs.pop("api_key", None)}

    async def _rendered(self, api: str, kwargs: dict[str, Any]) -> _RenderedCall:
        """A Messages (``api="messages"``) or Responses call: its fields read as that API reads them."""
        transport = self._transport(kwargs)
        body = msgspec.json.encode(kwargs)
        if api == "messages":
            decoded = decode_messages_request(body)
            message = MessageRendering(decoded, message_id())
            return _RenderedCall(decoded.chat, message, message.message, transport)
        turn = await begin_response(body, self.response_store, RESPONSES_TTL)
        return _RenderedCall(turn.chat, turn.rendering, turn.rendering.response, transport, turn.keep)


# -- the request log (when enabled: patchbay.requestlog.enable() or PATCHBAY_REQUEST_LOG=1) --------------


class _Recording:
    """Times one exchange and records it in the request log when it ends."""

    def __init__(self, log: requestlog.RequestLog, request: ChatCompletionRequest, events: EventStream) -> None:
        self.log, self.request, self.events = log, request, events
        self.time, self.started = time.time(), time.perf_counter()
        self.first: float | None = None

    def finish(self, error: BaseException | None = None) -> None:
        ttft = None if self.first is None else self.first - self.started
        self.log.record(requestlog.Exchange.from_stream(
            self.events, time=self.time, source="library", messages=self.request.messages,
            requested_model=self.request.model, latency=time.perf_counter() - self.started, ttft=ttft, error=error,
            options=self.request.options()))


async def _complete(events: EventStream, request: ChatCompletionRequest) -> ChatCompletion:
    log = requestlog.active()
    if log is None:
        return await complete(events, request.model)
    recording = _Recording(log, request, events)
    try:
        answer = await complete(events, request.model)
    except BaseException as exc:
        recording.finish(exc)
        raise
    recording.finish()
    return answer


def _chunks(events: EventStream, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
    chunks = stream_chunks(events, request.model, include_usage=request.include_usage)
    log = requestlog.active()
    return chunks if log is None else _recorded(chunks, _Recording(log, request, events))


async def _recorded(chunks: AsyncIterator[ChatCompletionChunk], recording: _Recording
                    ) -> AsyncIterator[ChatCompletionChunk]:
    error: BaseException | None = None
    try:
        async for chunk in chunks:
            if recording.first is None:
                recording.first = time.perf_counter()
            yield chunk
    except BaseException as exc:  # recorded, then re-raised
        error = exc
        raise
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        recording.finish(error)


# -- the Messages and Responses APIs ---------------------------------------------------------------


class _RenderedCall:
    """One Messages or Responses call, ready to run on the client's provider."""

    def __init__(self, request: ChatCompletionRequest, rendering: Rendering, result: Callable[[], dict[str, Any]],
                 transport: dict[str, Any], keep: Callable[[], Awaitable[None]] | None = None) -> None:
        self.request, self.rendering, self.result = request, rendering, result
        self.transport, self.keep = transport, keep

    async def whole(self, provider: ProviderType) -> dict[str, Any]:
        events = open_stream(provider, self.request, **self.transport)
        recording = _recording(self.request, events)
        try:
            answer: dict[str, Any] = await rendered_whole(self.rendering, events, self.result)
        except BaseException as exc:
            if recording is not None:
                recording.finish(exc)
            raise
        if recording is not None:
            recording.finish()
        if self.keep is not None:
            await self.keep()
        return answer

    async def events(self, provider: ProviderType) -> AsyncGenerator[dict[str, Any], None]:
        events = open_stream(provider, self.request, **self.transport)
        recording = _recording(self.request, events)
        error: BaseException | None = None
        try:
            async for _, payload in rendered_events(self.rendering, events, self.keep):
                if recording is not None and recording.first is None:
                    recording.first = time.perf_counter()
                yield payload
        except BaseException as exc:  # recorded, then re-raised
            error = exc
            raise
        finally:
            if recording is not None:
                recording.finish(error)


def _recording(request: ChatCompletionRequest, events: EventStream) -> _Recording | None:
    log = requestlog.active()
    return None if log is None else _Recording(log, request, events)


class EventDicts(BlockingStream[dict[str, Any]]):
    """The events of a streamed Messages or Responses answer, as dicts (``for event in stream``,
    or ``async for``)."""


class _AsyncRenderedAPI:
    def __init__(self, client: AsyncClient, api: str) -> None:
        self._client = client
        self._api = api

    async def create(self, **kwargs: Any) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """The whole answer as a dict, or with ``stream=True`` its events (dicts with a ``type``)."""
        call = await self._client._rendered(self._api, kwargs)
        if call.request.stream:
            return call.events(self._client.provider)
        return await call.whole(self._client.provider)


class _AsyncResponses(_AsyncRenderedAPI):
    async def retrieve(self, response_id: str) -> dict[str, Any]:
        """A response this client stored (ResourceNotFound when it did not, or it expired)."""
        return await _stored(self._client, response_id)


async def _embeddings(client: _Base, kwargs: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's embeddings answer (a dict) for ``embeddings.create``'s arguments."""
    transport = client._transport(kwargs)
    request = embedding_request_from_dict(kwargs)
    result = await client.provider.create_embedding(request, timeout=transport["timeout"], proxy=transport["proxy"],
                                                    api_key=transport["api_key"])
    return to_response(result, request.encoding_format)


class _AsyncEmbeddings:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, **kwargs: Any) -> dict[str, Any]:
        """Like ``openai.AsyncOpenAI().embeddings.create``, answering with the JSON as a dict."""
        return await _embeddings(self._client, kwargs)


class _Embeddings:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, **kwargs: Any) -> dict[str, Any]:
        """Like ``openai.OpenAI().embeddings.create``, answering with the JSON as a dict."""
        return run_sync(_embeddings(self._client, kwargs))


async def _stored(client: _Base, response_id: str) -> dict[str, Any]:
    stored = await client.response_store.get(response_id)
    if stored is None:
        raise ResourceNotFound(f"no response {response_id!r}: it was made without store, or has expired",
                               param="response_id")
    return stored.response


# -- async --------------------------------------------------------------------------------------------


class AsyncChunkStream:
    """The chunks of a streamed answer (``async for chunk in stream``); ``close()`` stops it early."""

    def __init__(self, chunks: AsyncIterator[ChatCompletionChunk]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._chunks

    async def close(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _AsyncCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, **kwargs: Any) -> ChatCompletion | AsyncChunkStream:
        """Like ``openai.AsyncOpenAI().chat.completions.create``; ``stream=True`` gives chunks."""
        request, transport = self._client._request(kwargs)
        events = open_stream(self._client.provider, request, **transport)
        if request.stream:
            return AsyncChunkStream(_chunks(events, request))
        return await _complete(events, request)


class _AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = _AsyncCompletions(client)


class _AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, refresh: bool = False) -> ModelList:
        """Like ``openai.AsyncOpenAI().models.list()``; the provider's list is cached, ``refresh`` asks again."""
        return await model_list(self._client.provider, refresh=refresh)

    async def retrieve(self, model: str) -> Model:
        return await find_model(self._client.provider, model)


class AsyncClient(_Base):
    """The asynchronous client: ``await client.chat.completions.create(...)``.

    ``provider`` is any provider class (a Router, ``Local``, a configured OpenAI-compatible
    service...); ``routes`` builds a router from plain data; otherwise the config file decides.
    """

    chat: _AsyncChat
    models: _AsyncModels
    messages: _AsyncRenderedAPI
    responses: _AsyncResponses
    embeddings: _AsyncEmbeddings

    def _attach(self) -> None:
        self.chat = _AsyncChat(self)
        self.models = _AsyncModels(self)
        self.messages = _AsyncRenderedAPI(self, "messages")
        self.responses = _AsyncResponses(self, "responses")
        self.embeddings = _AsyncEmbeddings(self)


# -- sync ---------------------------------------------------------------------------------------------


class ChunkStream(BlockingStream[ChatCompletionChunk]):
    """The chunks of a streamed answer for synchronous code (``for chunk in stream``)."""


class _Completions:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, **kwargs: Any) -> ChatCompletion | ChunkStream:
        """Like ``openai.OpenAI().chat.completions.create``; ``stream=True`` gives chunks."""
        request, transport = self._client._request(kwargs)
        provider = self._client.provider
        provider.resolve_model(request.model)  # an unknown model fails here, not at the first chunk
        if request.stream:
            def chunks() -> Iterator[ChatCompletionChunk] | AsyncIterator[ChatCompletionChunk]:
                return _chunks(open_stream(provider, request, **transport), request)

            return ChunkStream(chunks)  # type: ignore[arg-type]

        async def whole() -> ChatCompletion:
            return await _complete(open_stream(provider, request, **transport), request)

        return run_sync(whole())


class _Chat:
    def __init__(self, client: Client) -> None:
        self.completions = _Completions(client)


class _Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, refresh: bool = False) -> ModelList:
        """Like ``openai.OpenAI().models.list()``, over the bridge loop (see :class:`_AsyncModels`)."""
        return run_sync(model_list(self._client.provider, refresh=refresh))

    def retrieve(self, model: str) -> Model:
        return run_sync(find_model(self._client.provider, model))


class _RenderedAPI:
    def __init__(self, client: Client, api: str) -> None:
        self._client = client
        self._api = api

    def create(self, **kwargs: Any) -> dict[str, Any] | EventDicts:
        """The whole answer as a dict, or with ``stream=True`` its events (see :class:`_AsyncRenderedAPI`)."""
        client = self._client
        call = run_sync(client._rendered(self._api, kwargs))
        if call.request.stream:
            client.provider.resolve_model(call.request.model)  # an unknown model fails here, not at the first event
            return EventDicts(lambda: call.events(client.provider))
        return run_sync(call.whole(client.provider))


class _Responses(_RenderedAPI):
    def retrieve(self, response_id: str) -> dict[str, Any]:
        return run_sync(_stored(self._client, response_id))


class Client(_Base):
    """The synchronous client: ``client.chat.completions.create(...)`` (see :class:`AsyncClient`)."""

    chat: _Chat
    models: _Models
    messages: _RenderedAPI
    responses: _Responses
    embeddings: _Embeddings

    def _attach(self) -> None:
        self.chat = _Chat(self)
        self.models = _Models(self)
        self.messages = _RenderedAPI(self, "messages")
        self.responses = _Responses(self, "responses")
        self.embeddings = _Embeddings(self)
