"""The provider base classes: what every chat service adapter is.

A provider is a class with its capabilities as class attributes and one required method,
:meth:`AsyncGeneratorProvider.generate`, an async generator of typed stream events. Everything
else a caller uses (text streams, the awaitable form, the synchronous bridge, the whole answer
as a string, ``params``) is built here once, on top of ``generate``, and so is the rule that a
failure after text was delivered surfaces as :class:`~patchbay.errors.StreamInterrupted`
carrying exactly the delivered text.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar

import aiohttp

from patchbay.catalog import ModelRecord, catalog
from patchbay.config import UNSET, Timeout, TimeoutTypes
from patchbay.context import estimate_tokens, fit_messages
from patchbay.errors import ModelNotSupported, PatchbayError, StreamInterrupted
from patchbay.events import EventStream, ProviderInfo, StreamEvent, TextDelta, TextStream
from patchbay.http import map_transport_error
from patchbay.messages import Messages, validate_messages
from patchbay.sync import BlockingStream

__all__ = ["AsyncGeneratorProvider", "ProviderModelMixin", "classproperty"]

log = logging.getLogger("patchbay.providers")

_TRANSPORT_EXCEPTIONS = (aiohttp.ClientError, OSError)  # TimeoutError is an OSError


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
        """The provider's model names (its own ids, not aliases)."""
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


class AsyncGeneratorProvider:
    """Base class of every provider.

    Subclasses set the capability attributes and implement :meth:`generate`. Callers use
    :meth:`stream` (typed events), :meth:`create_async_generator` (text), :meth:`create_completion`
    (text, synchronous) or :meth:`create_async` (the whole answer).
    """

    name: ClassVar[str] = ""
    url: ClassVar[str] = ""
    working: ClassVar[bool] = True
    needs_auth: ClassVar[bool] = False
    supports_stream: ClassVar[bool] = True
    supports_message_history: ClassVar[bool] = True
    supports_system_message: ClassVar[bool] = True
    verify_ssl: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = False
    supports_prefill: ClassVar[bool] = False  # continues a trailing partial assistant message
    #: True when generate() fits the history to the model itself (with its own measure);
    #: otherwise stream() fits it to the catalog's context window with the token estimate.
    fits_context: ClassVar[bool] = False
    #: Whether the stream starts with this provider's ProviderInfo (a router lets its targets say it).
    announces_provider: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    # -- the one method a provider implements -------------------------------------------------

    @classmethod
    async def generate(
        cls,
        model: str,
        messages: Messages,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: Timeout,
        **kwargs: Any,
    ) -> AsyncIterator[StreamEvent]:
        """Stream the answer to ``messages`` as events. ``model`` is already resolved."""
        raise NotImplementedError
        yield  # pragma: no cover - makes this an async generator

    # -- what callers use ---------------------------------------------------------------------

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        """The provider's id for ``model`` (providers without a model list take it as given)."""
        if isinstance(cls, type) and issubclass(cls, ProviderModelMixin):
            return cls.get_model(model)
        return model or ""

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
        """A record for ``model`` with this provider's capability flags and aliases, plus ``fields``."""
        aliases = tuple(alias for alias, target in getattr(cls, "model_aliases", {}).items() if target == model)
        fields.setdefault("aliases", aliases)
        return ModelRecord(provider=cls.name, model=model, streaming=cls.supports_stream,
                           system_message=cls.supports_system_message, tools=cls.supports_tools,
                           prefill=cls.supports_prefill, **fields)

    @classmethod
    def stream(
        cls,
        model: str | None,
        messages: object,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        **kwargs: Any,
    ) -> EventStream:
        """Stream the answer as typed events. Bad messages or an unknown model fail here, at once."""
        return EventStream(cls.events(model, messages, proxy=proxy, base_url=base_url, timeout=timeout, **kwargs))

    @classmethod
    def events(
        cls,
        model: str | None,
        messages: object,
        *,
        proxy: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutTypes = UNSET,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        """The checked and guarded events behind :meth:`stream`, without the recording
        :class:`EventStream` (for a router, which keeps its own records of each attempt)."""
        checked = validate_messages(messages)
        resolved = cls.resolve_model(model)
        limits = Timeout.of(timeout)
        if not cls.fits_context:
            record = catalog().get(cls.name, resolved)
            if record is not None:
                checked = fit_messages(checked, record.input_budget(kwargs.get("max_tokens")), estimate_tokens)
        source = cls.generate(resolved, checked, proxy=proxy, base_url=base_url, timeout=limits, **kwargs)
        return _guarded(cls.name, resolved, source, announce=cls.announces_provider)

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
        """The supported parameters, from the signature of :meth:`generate`."""
        signature = inspect.signature(cls.generate)
        parts = ["model: str", "messages: list"]
        for parameter in signature.parameters.values():
            if parameter.name in ("model", "messages") or parameter.kind is parameter.VAR_KEYWORD:
                continue
            text = parameter.name
            if parameter.annotation is not parameter.empty:
                annotation = parameter.annotation
                text += f": {annotation if isinstance(annotation, str) else annotation.__name__}"
            if parameter.default is not parameter.empty:
                text += f" = {parameter.default!r}"
            parts.append(text)
        owner: type = cls  # type: ignore[assignment]
        return f"{owner.__module__}.{owner.__qualname__} supports: ({', '.join(parts)})"


async def _guarded(provider: str, model: str, source: AsyncIterator[StreamEvent], *,
                   announce: bool = True) -> AsyncGenerator[StreamEvent, None]:
    """Run a provider's stream: announce who answers, attach context to errors, and turn any
    failure after text was delivered into StreamInterrupted with exactly that text."""
    delivered: list[str] = []
    try:
        if announce:
            yield ProviderInfo(provider=provider, model=model)
        async for event in source:
            if isinstance(event, TextDelta):
                if not event.text:
                    continue
                delivered.append(event.text)
            yield event
    except PatchbayError as exc:
        exc.with_context(provider=provider, model=model)
        if delivered and not isinstance(exc, StreamInterrupted):
            raise _interrupted(exc, delivered, provider, model) from exc
        raise
    except _TRANSPORT_EXCEPTIONS as exc:
        error = map_transport_error(exc, provider=provider).with_context(provider=provider, model=model)
        if delivered:
            raise _interrupted(error, delivered, provider, model) from exc
        raise error from exc
    finally:
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def _interrupted(cause: PatchbayError, delivered: list[str], provider: str, model: str) -> StreamInterrupted:
    error = StreamInterrupted(
        f"the answer was interrupted after {sum(map(len, delivered))} characters: {cause.message}",
        partial_text="".join(delivered),
        provider=provider,
        model=model,
    )
    error.__cause__ = cause
    return error
