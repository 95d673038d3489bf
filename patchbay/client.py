"""An OpenAI-style client that runs in-process: no server needed.

``client.chat.completions.create(model=..., messages=..., stream=...)`` and
``client.models.list()`` behave like the openai SDK's, and answer with objects of the same shape
(:mod:`patchbay.completions`). Behind them is any provider class: by default the router described
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
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from patchbay import requestlog
from patchbay.chat.request import ChatCompletionRequest, request_from_kwargs
from patchbay.completions import (
    ChatCompletion,
    ChatCompletionChunk,
    Model,
    ModelList,
    complete,
    find_model,
    model_list,
    open_stream,
    stream_chunks,
)
from patchbay.config import UNSET, TimeoutTypes
from patchbay.errors import InvalidRequest
from patchbay.events import EventStream
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.sync import BlockingStream, run_sync

__all__ = ["AsyncChunkStream", "AsyncClient", "ChunkStream", "Client"]

ProviderType = type[AsyncGeneratorProvider]
#: Options of the openai SDK's ``create()`` that shape its HTTP request, not the chat request.
SDK_ONLY = ("extra_headers", "extra_query")


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
        transport = {"timeout": kwargs.pop("timeout", self.timeout), "proxy": kwargs.pop("proxy", self.proxy),
                     "auth": kwargs.pop("auth", None), "api_key": kwargs.pop("api_key", None)}
        return request_from_kwargs(kwargs), transport


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

    def _attach(self) -> None:
        self.chat = _AsyncChat(self)
        self.models = _AsyncModels(self)


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


class Client(_Base):
    """The synchronous client: ``client.chat.completions.create(...)`` (see :class:`AsyncClient`)."""

    chat: _Chat
    models: _Models

    def _attach(self) -> None:
        self.chat = _Chat(self)
        self.models = _Models(self)
