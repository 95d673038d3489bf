"""Calling a provider with the one request type: its event stream, and its models as OpenAI objects.

These run a provider, so they live here and not in :mod:`patchbay.chat`, which is a data model
and pure conversions; the client and the server both call them.
"""

from __future__ import annotations

from typing import Any

from patchbay.chat.request import ChatCompletionRequest
from patchbay.chat.response import Model, ModelList
from patchbay.errors import ModelNotSupported
from patchbay.events import EventStream, Ledger, Transcript
from patchbay.providers.base import AsyncGeneratorProvider

__all__ = ["find_model", "model_list", "open_stream"]


async def model_list(provider: type[AsyncGeneratorProvider], *, refresh: bool = False) -> ModelList:
    """The models ``provider`` serves (a router: its routes, then what its catch-all passes through),
    as ``GET /v1/models`` shows them. Awaits the provider's ``list_models`` (cached; ``refresh`` asks
    again), so it never blocks the loop."""
    names = await provider.list_models(refresh=refresh)
    return ModelList(data=[Model(id=name, owned_by=provider.name) for name in names])


async def find_model(provider: type[AsyncGeneratorProvider], model: str) -> Model:
    """One model of :func:`model_list`; ModelNotSupported (404) names the valid ones."""
    models = (await model_list(provider)).data
    for item in models:
        if item.id == model:
            return item
    raise ModelNotSupported(f"model {model!r} not found; models: {', '.join(m.id for m in models)}",
                            model=model, param="model")


def open_stream(provider: type[AsyncGeneratorProvider], request: ChatCompletionRequest, **options: Any
                ) -> EventStream:
    """Start ``request`` on ``provider`` (``options``: timeout, proxy, base_url, auth, api_key); the stream
    records what it hands over in the request's transcript."""
    transcript, ledger = Transcript(), Ledger()
    return EventStream(provider.open(request, transcript=transcript, ledger=ledger, **options), transcript, ledger)
