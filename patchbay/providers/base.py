"""The provider base classes: what every chat service adapter is.

A provider is a class with its capabilities as class attributes and one required method,
:meth:`AsyncGeneratorProvider.generate`, an async generator of typed stream events for one
:class:`~patchbay.chat.request.ChatCompletionRequest` and one :class:`Call`. Everything else a
caller uses (text streams, the awaitable form, the synchronous bridge, the whole answer as a
string, ``params``) is built here once, on top of ``generate``, and so are the rules every
provider shares: a request that needs a feature the provider cannot honour is refused before it
is sent; a text-only web service gets tools and JSON output by emulation; stop strings are cut;
and a failure after output reached the caller (as the request's transcript records it) surfaces
as :class:`~patchbay.errors.StreamInterrupted` carrying exactly the delivered text.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

from patchbay.chat.context import estimate_tokens, fit_messages
from patchbay.chat.embeddings import EmbeddingRequest, EmbeddingResult
from patchbay.chat.messages import validate_messages
from patchbay.chat.request import ChatCompletionRequest, request_from_kwargs
from patchbay.chat.stops import cut_at_stops
from patchbay.errors import ModelNotSupported, PatchbayError, StreamInterrupted, UnsupportedFeature
from patchbay.events import EventStream, Ledger, Mark, ProviderInfo, StreamEvent, TextStream, Transcript, Usage
from patchbay.net.session import map_transport_error
from patchbay.net.transport import TransportError
from patchbay.providers.capabilities import Capabilities, Support, needs
from patchbay.providers.catalog import ModelRecord, Prices, catalog
from patchbay.providers.emulation import emulate
from patchbay.providers.pricing import Meter
from patchbay.sync import BlockingStream
from patchbay.timeouts import UNSET, Timeout, TimeoutTypes

__all__ = ["AsyncGeneratorProvider", "Call", "ProviderModelMixin", "classproperty"]

log = logging.getLogger("patchbay.providers")

_TRANSPORT_EXCEPTIONS = (TransportError, OSError)  # a transport's own, and a provider's socket use


class classproperty:
    """A read-only property computed from the class."""

    def __init__(self, fget: Any) -> None:
        self.fget = fget
        self.__doc__ = fget.__doc__

    def __get__(self, instance: object, owner: type) -> Any:
        return self.fget(owner)


class ProviderModelMixin:
    """Model names for a provider: the default, the served list and public aliases."""

    default_model: ClassVar[str] = ""
    models: ClassVar[list[str]] = []
    model_aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def get_models(cls) -> list[str]:
        """The provider's model names (its own ids, not aliases). Sync and never blocking on I/O
        inside a running event loop; async code awaits :meth:`AsyncGeneratorProvider.list_models`."""
        return list(cls.models) or ([cls.default_model] if cls.default_model else [])

    @classmethod
    def get_model(cls, name: str | None) -> str:
        """The provider's id for ``name``: empty -> default, aliases first, unknown -> error."""
        if not name:
            return cls.default_model
        if name in cls.model_aliases:
            return cls.model_aliases[name]
        models = cls.get_models()
        if name in models:
            return name
        valid = sorted(set(models) | set(cls.model_aliases))
        raise ModelNotSupported(
            f"model {name!r} is not supported; valid models: {', '.join(valid) or '(none)'}",
            provider=getattr(cls, "name", cls.__name__),
            model=name,
            param="model",
        )

    @classmethod
    def is_supported(cls, name: str) -> bool:
        """Whether ``name`` is a model or alias this provider serves."""
        return name in cls.model_aliases or name in cls.get_models()


@dataclass(frozen=True, slots=True)
class Call:
    """How a provider is called for one request, besides the request itself."""

    model: str  #: the provider's own model id (resolved)
    timeout: Timeout
    #: What reached the caller of the whole request; ask it (``mark``/``since``) before retrying.
    transcript: Transcript
    proxy: str | None = None
    base_url: str | None = None  #: this call's API address, when not the provider's default
    auth: str | None = None  #: auth code(s) for a web chat service, given for this call
    api_key: str | None = None  #: an API key for an OpenAI-compatible service, given for this call
    #: What the request is charged, attempt by attempt (a router hands it to its targets).
    ledger: Ledger | None = None


class AsyncGeneratorProvider:
    """Base class of every provider.

    Subclasses set the capability attributes and implement :meth:`generate`. Callers use
    :meth:`stream` (typed events), :meth:`create_async_generator` (text), :meth:`create_completion`
    (text, synchronous) or :meth:`create_async` (the whole answer); a router calls :meth:`open`.
    """

    name: ClassVar[str] = ""
    url: ClassVar[str] = ""
    working: ClassVar[bool] = True
    needs_auth: ClassVar[bool] = False
    supports_stream: ClassVar[bool] = True
    supports_message_history: ClassVar[bool] = True
    supports_system_message: ClassVar[bool] = True
    verify_ssl: ClassVar[bool] = True
    supports_prefill: ClassVar[bool] = False  # continues a trailing partial assistant message
    #: Per-feature support besides the two flags above (providers/capabilities.py); config can
    #: override it per provider.
    features: ClassVar[Capabilities] = Capabilities()
    #: True for a web chat that takes only text conversations: the base class renders tool-loop
    #: history and content lists as text, and emulates tools and JSON output (providers/emulation.py).
    text_only: ClassVar[bool] = False
    #: True when generate() fits the history to the model itself (with its own measure);
    #: otherwise stream() fits it to the catalog's context window with the token estimate.
    fits_context: ClassVar[bool] = False
    #: Whether the stream starts with this provider's ProviderInfo (a router lets its targets say it).
    announces_provider: ClassVar[bool] = True
    #: True for a router: it runs other providers' :meth:`open`, which check, fit and cut for it.
    delegates: ClassVar[bool] = False
    #: What every model of this provider costs (config's ``[providers.NAME.prices]``); None: the
    #: catalog's prices per model.
    prices: ClassVar[Prices | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    # -- the one method a provider implements -------------------------------------------------

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        """Stream the answer to ``request`` as events; ``call.model`` is already resolved."""
        raise NotImplementedError
        yield  # pragma: no cover - makes this an async generator

    @classmethod
    async def embed(cls, request: EmbeddingRequest, call: Call) -> EmbeddingResult:
        """The embedding vectors for ``request``, one per input (``call.model`` is resolved). A
        provider that makes embeddings overrides this and states the ``embeddings`` capability."""
        raise UnsupportedFeature(f"{cls.name} does not make embeddings", param="model", provider=cls.name)

    # -- what callers use ---------------------------------------------------------------------

    @classmethod
    async def create_embedding(
        cls,
        request: EmbeddingRequest,
        *,
        model: str | None = None,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        api_key: str | None = None,
    ) -> EmbeddingResult:
        """The embeddings for ``request`` (``model``: the name to resolve, default the request's),
        the way :meth:`open` runs a chat: a provider without the ``embeddings`` capability refuses
        at once (UnsupportedFeature, 400, naming ``model``), errors carry the provider and model,
        and a transport failure becomes its patchbay error. The result names who answered."""
        resolved = cls.resolve_model(request.model if model is None else model)
        if not cls.delegates and not cls.capabilities().accepts("embeddings"):
            raise UnsupportedFeature(f"{cls.name} does not accept embeddings", param="model", provider=cls.name,
                                     model=resolved)
        call = Call(resolved, Timeout.of(timeout), Transcript(), proxy, base_url, None, api_key)
        try:
            result = await cls.embed(request, call)
        except PatchbayError as exc:
            exc.with_context(provider=cls.name, model=resolved)
            raise
        except _TRANSPORT_EXCEPTIONS as exc:
            raise map_transport_error(exc, provider=cls.name).with_context(provider=cls.name, model=resolved) from exc
        if cls.delegates:  # its target priced it
            return result if result.provider is not None else dataclasses.replace(result, provider=cls.name)
        prices = cls.prices_for(resolved)
        cost = prices.cost(result.prompt_tokens, 0) if prices is not None else 0.0
        return dataclasses.replace(result, provider=result.provider or cls.name, cost=cost)

    @classmethod
    def capabilities(cls) -> Capabilities:
        """What this provider honours, per feature: :attr:`features` plus the two ``supports_`` flags."""
        return _with_flags(cls.features, cls.supports_system_message, cls.supports_prefill)

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        """The provider's id for ``model`` (providers without a model list take it as given)."""
        if isinstance(cls, type) and issubclass(cls, ProviderModelMixin):
            return cls.get_model(model)
        return model or ""

    @classmethod
    async def list_models(cls, *, refresh: bool = False) -> list[str]:
        """The model names this provider serves (``GET /v1/models``). This default is the static
        list (``get_models``) and does no I/O; a provider that asks its service overrides it,
        caching the answer (``refresh`` asks again)."""
        get_models = getattr(cls, "get_models", None)
        return list(get_models()) if get_models is not None else []

    @classmethod
    def model_records(cls) -> list[ModelRecord]:
        """Catalog records for this provider's models (no network). Override to state limits."""
        names = list(getattr(cls, "models", []) or [])
        default = getattr(cls, "default_model", "")
        if default and default not in names:
            names.append(default)
        return [cls.model_record(name) for name in names]

    @classmethod
    def model_record(cls, model: str, **fields: Any) -> ModelRecord:
        """A record for ``model`` with this provider's capabilities and aliases, plus ``fields``."""
        aliases = tuple(alias for alias, target in getattr(cls, "model_aliases", {}).items() if target == model)
        fields.setdefault("aliases", aliases)
        capabilities = cls.capabilities()
        return ModelRecord(provider=cls.name, model=model, streaming=cls.supports_stream,
                           system_message=cls.supports_system_message, tools=capabilities.accepts("tools"),
                           prefill=cls.supports_prefill, **fields)

    @classmethod
    def request(cls, model: str | None, messages: object, **fields: Any) -> ChatCompletionRequest:
        """The checked request for a call in the seeds' shape (``model``, ``messages``, options);
        the caller reads a stream, so the upstream is asked to stream unless ``stream=False``."""
        checked = validate_messages(messages)
        fields.setdefault("stream", True)
        return request_from_kwargs({"model": model or cls.resolve_model(model) or "default",
                                    "messages": checked, **fields})

    @classmethod
    def open(
        cls,
        request: ChatCompletionRequest,
        *,
        model: str | None = None,
        transcript: Transcript,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        auth: str | None = None,
        api_key: str | None = None,
        ledger: Ledger | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """The checked and guarded events for ``request`` (``model``: the name to resolve, default
        the request's). A need the provider cannot honour fails here, at once. With a ``ledger``,
        the attempt is charged to it (see :mod:`patchbay.providers.pricing`)."""
        resolved = cls.resolve_model(request.model if model is None else model)
        call = Call(resolved, Timeout.of(timeout), transcript, proxy, base_url, auth, api_key, ledger)
        if cls.delegates:  # its targets' streams are metered, not its own
            return _guarded(cls.name, resolved, cls.generate(request, call), transcript,
                            announce=cls.announces_provider)
        cls.check(request)
        if not cls.fits_context:
            record = catalog().get(cls.name, resolved)
            if record is not None:
                dicts = request.message_dicts()
                fitted = fit_messages(dicts, record.input_budget(request.max_output_tokens), estimate_tokens)
                if fitted is not dicts:
                    request = request.with_messages(fitted)
        source = _emulated(cls, request, call) if cls.text_only else cls.generate(request, call)
        if request.stop and not (request.n or 1) > 1:
            source = cut_at_stops(source, request.stops)
        meter = None if ledger is None else Meter(cls.name, resolved, cls.prices_for(resolved), request, transcript,
                                                  ledger)
        return _guarded(cls.name, resolved, source, transcript, announce=cls.announces_provider, meter=meter)

    @classmethod
    def prices_for(cls, model: str) -> Prices | None:
        """What ``model``'s tokens cost here: the provider's configured prices, else the catalog's
        for the model (None: not known)."""
        if cls.prices is not None:
            return cls.prices
        record = catalog().get(cls.name, model)
        return record.prices if record is not None else None

    @classmethod
    def check(cls, request: ChatCompletionRequest) -> None:
        """Refuse ``request`` (UnsupportedFeature, 400) when it needs a feature this provider lacks."""
        wanted = needs(request)
        if not wanted:
            return
        capabilities = cls.capabilities()
        for need in wanted:
            if not capabilities.accepts(need.feature):
                raise UnsupportedFeature(f"{cls.name} does not accept {need.phrase}", param=need.param,
                                         provider=cls.name)

    @classmethod
    def stream(
        cls,
        model: str | None,
        messages: object,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        auth: str | None = None,
        api_key: str | None = None,
        **fields: Any,
    ) -> EventStream:
        """Stream the answer as typed events. Bad messages or an unknown model fail here, at once.
        ``fields`` are request fields (``max_tokens``, ``tools``...; others go to ``extra_body``);
        ``auth`` (a web chat's auth codes) and ``api_key`` are credentials for this call."""
        request = cls.request(model, messages, **fields)
        transcript, ledger = Transcript(), Ledger()
        events = cls.open(request, model=model or None, transcript=transcript, proxy=proxy, base_url=base_url,
                          timeout=timeout, auth=auth, api_key=api_key, ledger=ledger)
        return EventStream(events, transcript, ledger)

    @classmethod
    def create_async_generator(
        cls,
        model: str | None,
        messages: object,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        **kwargs: Any,
    ) -> TextStream:
        """Stream the answer as text deltas; iterate directly or ``await`` first, then iterate."""
        return cls.stream(model, messages, proxy=proxy, base_url=base_url, timeout=timeout, **kwargs).text_stream()

    @classmethod
    def create_completion(
        cls,
        model: str | None,
        messages: object,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        **kwargs: Any,
    ) -> BlockingStream[str]:
        """Stream the answer as text deltas to synchronous code (works inside a running loop too)."""
        checked = validate_messages(messages)
        cls.resolve_model(model)  # fail at once on an unknown model

        def factory() -> TextStream:
            return cls.create_async_generator(
                model, checked, proxy=proxy, base_url=base_url, timeout=timeout, **kwargs
            )

        return BlockingStream(factory)

    @classmethod
    async def create_async(
        cls,
        model: str | None,
        messages: object,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        **kwargs: Any,
    ) -> str:
        """The whole answer as one string."""
        return await cls.stream(model, messages, proxy=proxy, base_url=base_url, timeout=timeout, **kwargs).collect()

    @classproperty
    def params(cls) -> str:
        """The request fields and call options every provider takes (see ChatCompletionRequest)."""
        owner: type = cls  # type: ignore[assignment]
        fields = ", ".join(f for f in ChatCompletionRequest.__struct_fields__ if f not in ("model", "messages"))
        return (f"{owner.__module__}.{owner.__qualname__} supports: (model: str, messages: list, {fields}, "
                "proxy: str, base_url: str, timeout: Timeout, auth: str, api_key: str)")


@functools.lru_cache(maxsize=256)
def _with_flags(features: Capabilities, system_message: bool, prefill: bool) -> Capabilities:
    """``features`` with the two features the ``supports_`` flags state (cached: a request asks it)."""
    return features.merged({"system_message": Support.NATIVE if system_message else Support.NONE,
                            "prefill": Support.NATIVE if prefill else Support.NONE})


def _emulated(provider: type[AsyncGeneratorProvider], request: ChatCompletionRequest, call: Call
              ) -> AsyncIterator[StreamEvent]:
    """A text-only service's answer, with tool-loop history rendered as text and tools and JSON
    output emulated (prompt, parse, validate, one repair turn)."""

    def run(messages: list[dict[str, Any]]) -> AsyncIterator[StreamEvent]:
        return provider.generate(request.with_messages(messages), call)

    return emulate(request.message_dicts(), tools=request.tools, tool_choice=request.tool_choice,
                   response_format=request.response_format, parallel_tool_calls=request.parallel_tool_calls,
                   run=run)


async def _guarded(provider: str, model: str, source: AsyncIterator[StreamEvent], transcript: Transcript, *,
                   announce: bool = True, meter: Meter | None = None) -> AsyncGenerator[StreamEvent, None]:
    """Run a provider's stream: announce who answers, attach context to errors, turn any failure
    after output reached the caller into StreamInterrupted with exactly that text, and charge the
    attempt (``meter``) however it ends."""
    mark = transcript.mark()
    try:
        if announce:
            yield ProviderInfo(provider=provider, model=model)
        if meter is None:
            async for event in source:
                yield event
        else:
            async for event in source:
                yield meter.priced(event) if type(event) is Usage else event
            if not meter.charged:
                yield meter.estimate()
    except PatchbayError as exc:
        exc.with_context(provider=provider, model=model)
        if transcript.since(mark) and not isinstance(exc, StreamInterrupted):
            raise _interrupted(exc, transcript, mark, provider, model) from exc
        raise
    except _TRANSPORT_EXCEPTIONS as exc:
        error = map_transport_error(exc, provider=provider).with_context(provider=provider, model=model)
        if transcript.since(mark):
            raise _interrupted(error, transcript, mark, provider, model) from exc
        raise error from exc
    finally:
        if meter is not None:
            meter.close()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def _interrupted(cause: PatchbayError, transcript: Transcript, mark: Mark, provider: str, model: str
                 ) -> StreamInterrupted:
    text = transcript.text_since(mark)
    error = StreamInterrupted(
        f"the answer was interrupted after {len(text)} characters: {cause.message}",
        partial_text=text,
        provider=provider,
        model=model,
    )
    error.__cause__ = cause
    return error
