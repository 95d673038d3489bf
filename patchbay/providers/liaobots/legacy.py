"""Liaobots, first generation: the module-level ``_create_completion`` the old clients called.

Protocol: one ``POST /api/chat`` with the caller's auth code
(docs/protocols.md#liaobots-legacy-request); the answer is raw UTF-8 text in arbitrary chunks,
decoded incrementally here, so a character split across chunks stays whole
(docs/protocols.md#liaobots-legacy-reply). A wrong code gets a plain ``Error`` body, sometimes
with status 200, which is recognised and raised as :class:`~patchbay.errors.AuthError`, never
shown as text (docs/protocols.md#liaobots-legacy-errors). The module keeps its old attributes
(``url``, ``model``, ``models``, ``params``, ...; docs/protocols.md#liaobots-legacy-module-interface)
and :class:`LiaobotsLegacy` is the same service as a regular provider.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar, get_type_hints

from patchbay.chat.context import count_chars, fit_messages
from patchbay.chat.messages import content_text
from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import AuthError
from patchbay.events import StreamEvent, TextDelta
from patchbay.net.decoders import UTF8Decoder
from patchbay.net.session import BROWSER_USER_AGENT
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin
from patchbay.providers.capabilities import Capabilities
from patchbay.providers.catalog import FREE, ModelRecord
from patchbay.providers.web import DEFAULT_IMPERSONATE, browser_session
from patchbay.redact import register_secret
from patchbay.sync import BlockingStream

__all__ = ["LiaobotsLegacy", "_create_completion", "model", "models", "needs_auth", "params", "supports_stream", "url"]

url = "https://liaobots.com"
model = ["gpt-3.5-turbo", "gpt-4"]
supports_stream = True
needs_auth = True
models: dict[str, dict[str, Any]] = {
    "gpt-4": {"id": "gpt-4", "name": "GPT-4", "maxLength": 24000, "tokenLimit": 8000},
    "gpt-3.5-turbo": {"id": "gpt-3.5-turbo", "name": "GPT-3.5", "maxLength": 12000, "tokenLimit": 4000},
}
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
_ERROR_BODY = b"Error"


class LiaobotsLegacy(AsyncGeneratorProvider, ProviderModelMixin):
    """Liaobots first generation; needs an auth code (``auth=``)."""

    url = url
    working = False  # the service is gone; selectable by name for replicas and old code
    needs_auth = True
    supports_stream = True
    prices = FREE  # a free web chat service
    supports_message_history = True
    supports_system_message = True
    default_model = "gpt-3.5-turbo"
    models: ClassVar[list[str]] = list(models)
    fits_context = True  # to the model's maxLength, in characters
    text_only = True  # tools and JSON output by emulation; history rendered as text
    features = Capabilities.emulated_output()
    impersonate: ClassVar[str | None] = DEFAULT_IMPERSONATE  # the browser profile for https sites

    @classmethod
    def model_records(cls) -> list[ModelRecord]:
        return [cls.model_record(m, context_window=r["tokenLimit"], max_chars=r["maxLength"])
                for m, r in models.items()]

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        """Stream an answer; ``call.auth`` (the auth code) is required."""
        auth = call.auth
        if not auth:
            raise AuthError("an auth code is required: pass auth='YOUR_AUTH_CODE'", param="auth")
        register_secret(auth)
        base = (call.base_url or url).rstrip("/")
        record = models[call.model]
        history = fit_messages(request.message_dicts(), record["maxLength"], count_chars, unit="characters")
        system = [m for m in history if m.get("role") == "system"]
        body = {
            "conversationId": str(uuid.uuid4()),
            "model": record,
            "messages": [m for m in history if m.get("role") != "system"],
            "key": "",
            "prompt": "\n".join(content_text(m) for m in system) or DEFAULT_SYSTEM_PROMPT,
        }
        headers = {
            "content-type": "application/json",
            "origin": url,
            "referer": f"{url}/",
            "x-auth-code": auth,
        }
        async with (
            browser_session(call, base, provider=cls.name, headers={"user-agent": BROWSER_USER_AGENT},
                            impersonate=cls.impersonate) as http,
            http.request("POST", f"{base}/api/chat", json=body, headers=headers) as response,
        ):
            if response.status >= 300:
                raise await http.status_error(response)
            decoder = UTF8Decoder()  # across chunks, unlike the old client (docs/protocols.md#liaobots-legacy-reply)
            # Bytes that could still turn out to be the `Error` body (docs/protocols.md#liaobots-legacy-errors).
            held: bytes | None = b""
            async for chunk in http.iter_bytes(response):
                if held is not None:
                    held += chunk
                    if _ERROR_BODY.startswith(held.strip()):
                        continue  # not yet known whether this is an answer or the error body
                    chunk, held = held, None
                for text in decoder.decode(chunk):
                    yield TextDelta(text)
            if held is not None and held.strip() == _ERROR_BODY:
                raise AuthError("the service rejected the auth code (answered `Error`)")
            for text in decoder.decode(held or b"") + decoder.flush():
                yield TextDelta(text)


def _create_completion(model: str, messages: list, stream: bool, **kwargs: Any) -> BlockingStream[str]:
    """Yield the answer (deltas when ``stream``, else the whole text once); ``auth=`` required.

    The result works with ``for`` and, inside a coroutine, with ``async for``.
    """
    if not kwargs.get("auth"):
        raise AuthError("an auth code is required: pass auth='YOUR_AUTH_CODE'", provider="LiaobotsLegacy",
                        param="auth")
    if stream:
        return LiaobotsLegacy.create_completion(model, messages, **kwargs)

    async def whole() -> AsyncIterator[str]:
        yield await LiaobotsLegacy.create_async(model, messages, **kwargs)

    LiaobotsLegacy.resolve_model(model)  # fail at once on an unknown model
    return BlockingStream(whole)


_arguments = _create_completion.__code__.co_varnames[: _create_completion.__code__.co_argcount]
_hints = get_type_hints(_create_completion)
params = "patchbay.providers.Liaobots supports: ({})".format(
    ", ".join(f"{name}: {_hints[name].__name__}" for name in _arguments)
)
