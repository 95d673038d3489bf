"""An OpenAI-style client that runs in-process: no server needed.

``client.chat.completions.create(model=..., messages=..., stream=...)`` and
``client.models.list()`` behave like the openai SDK's, and answer with objects of the same shape
(:mod:`patchbay.completions`). Behind them is any provider class: by default the router described
by the config file (see :mod:`patchbay.settings`), which with no file is the embedded model.

    client = patchbay.Client()
    answer = client.chat.completions.create(model="smollm2-135m-instruct",
                                            messages=[{"role": "user", "content": "Hi"}])
    print(answer.choices[0].message.content, answer.provider)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from patchbay.completions import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Model,
    ModelList,
    complete,
    find_model,
    model_list,
    open_stream,
    request_from_kwargs,
    stream_chunks,
)
from patchbay.config import UNSET, TimeoutTypes
from patchbay.providers.base import AsyncGeneratorProvider
from patchbay.sync import BlockingStream, run_sync

__all__ = ["AsyncChunkStream", "AsyncClient", "ChunkStream", "Client"]

ProviderType = type[AsyncGeneratorProvider]


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

    def _request(self, kwargs: dict[str, Any]) -> tuple[ChatCompletionRequest, dict[str, Any]]:
        transport = {"timeout": kwargs.pop("timeout", self.timeout), "proxy": kwargs.pop("proxy", self.proxy)}
        return request_from_kwargs(kwargs), transport


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
            return AsyncChunkStream(stream_chunks(events, request.model, include_usage=request.include_usage))
        return await complete(events, request.model)


class _AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = _AsyncCompletions(client)


class _AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> ModelList:
        return model_list(self._client.provider)

    async def retrieve(self, model: str) -> Model:
        return find_model(self._client.provider, model)


class AsyncClient(_Base):
    """The asynchronous client: ``await client.chat.completions.create(...)``.

    ``provider`` is any provider class (a Router, ``Local``, a configured OpenAI-compatible
    service...); ``routes`` builds a router from plain data; otherwise the config file decides.
    """

    def __init__(self, provider: ProviderType | None = None, *, routes: Mapping[str, Sequence[Any]] | None = None,
                 config: str | Path | None = None, timeout: TimeoutTypes = UNSET, proxy: str | None = None) -> None:
        super().__init__(provider, routes=routes, config=config, timeout=timeout, proxy=proxy)
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
                events = open_stream(provider, request, **transport)
                return stream_chunks(events, request.model, include_usage=request.include_usage)

            return ChunkStream(chunks)  # type: ignore[arg-type]

        async def whole() -> ChatCompletion:
            return await complete(open_stream(provider, request, **transport), request.model)

        return run_sync(whole())


class _Chat:
    def __init__(self, client: Client) -> None:
        self.completions = _Completions(client)


class _Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> ModelList:
        return model_list(self._client.provider)

    def retrieve(self, model: str) -> Model:
        return find_model(self._client.provider, model)


class Client(_Base):
    """The synchronous client: ``client.chat.completions.create(...)`` (see :class:`AsyncClient`)."""

    def __init__(self, provider: ProviderType | None = None, *, routes: Mapping[str, Sequence[Any]] | None = None,
                 config: str | Path | None = None, timeout: TimeoutTypes = UNSET, proxy: str | None = None) -> None:
        super().__init__(provider, routes=routes, config=config, timeout=timeout, proxy=proxy)
        self.chat = _Chat(self)
        self.models = _Models(client=self)
