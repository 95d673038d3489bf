"""AiChatOnline: a web chat service that takes the whole conversation as one prompt.

Protocol: fetch a unique id, with a ``canvas`` query that defeats caches
(docs/protocols.md#aichatonline-unique-id), then post the formatted prompt
(docs/protocols.md#aichatonline-prompt-format) with that id in the ``UniqueId`` header
(docs/protocols.md#aichatonline-chat-request); the answer is newline-delimited JSON
``{"data": {"message": ...}}``, lines that do not fit are skipped
(docs/protocols.md#aichatonline-stream-format).
Its maintainers marked it not working, so it is only used when asked for by name.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
from collections.abc import AsyncIterator
from typing import ClassVar

from patchbay.chat.messages import Messages, content_text
from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import ProtocolError
from patchbay.events import StreamEvent, TextDelta
from patchbay.net.decoders import NDJSONDecoder
from patchbay.net.session import BROWSER_USER_AGENT, HTTPSession, error_for_response
from patchbay.net.transport import Response
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin
from patchbay.providers.capabilities import Capabilities
from patchbay.providers.catalog import FREE
from patchbay.providers.web import DEFAULT_IMPERSONATE, browser_session
from patchbay.redact import clip

__all__ = ["AiChatOnline", "format_prompt"]

log = logging.getLogger("patchbay.providers.aichatonline")

_ALPHABET = string.ascii_lowercase + string.digits


def _random_id(length: int = 10) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def format_prompt(messages: Messages) -> str:
    """One message: its content alone; several: ``Role: content`` lines, then ``Assistant:``
    (docs/protocols.md#aichatonline-prompt-format)."""
    if len(messages) == 1:
        return content_text(messages[0])
    lines = "\n".join(f"{m['role'].capitalize()}: {content_text(m)}" for m in messages)
    return f"{lines}\nAssistant:"


class AiChatOnline(AsyncGeneratorProvider, ProviderModelMixin):
    """AiChatOnline (marked not working by its maintainers; the model name is ignored)."""

    url = "https://aichatonline.org"
    api_base: ClassVar[str] = "https://aichatonlineorg.erweima.ai"
    working = False
    needs_auth = False
    supports_stream = True
    prices = FREE  # a free web chat service
    supports_message_history = True
    supports_system_message = True
    default_model = "gpt-4o-mini"
    models: ClassVar[list[str]] = ["gpt-4o-mini"]
    text_only = True  # tools and JSON output by emulation; history rendered as text
    features = Capabilities.emulated_output()
    impersonate: ClassVar[str | None] = DEFAULT_IMPERSONATE  # the browser profile for https sites

    @classmethod
    async def grab_token(
        cls,
        session: object,
        proxy: str | None = None,
        *,
        base_url: str | None = None,
    ) -> str:
        """Fetch a unique id for a chat, with a random ``canvas`` value to defeat caches
        (docs/protocols.md#aichatonline-unique-id).

        ``session`` is a patchbay :class:`HTTPSession`; any other object (the old documentation's
        ``aiohttp.ClientSession``) stands for "a session of your own", and the request goes out
        through patchbay's transport with ``proxy``, as does a ``proxy`` that is not the session's."""
        if not isinstance(session, HTTPSession) or (proxy is not None and proxy != session.proxy):
            timeout = session.timeout if isinstance(session, HTTPSession) else None
            headers = session.headers if isinstance(session, HTTPSession) else _browser_headers(cls.url)
            async with HTTPSession(timeout=timeout, proxy=proxy, headers=headers, provider=cls.name) as own:
                return await cls.grab_token(own, base_url=base_url)
        base = (base_url or cls.api_base).rstrip("/")
        request_url = f"{base}/api/v1/user/getUniqueId"
        params = {"canvas": f"-{_random_id()}"}
        async with session.request("GET", request_url, params=params) as response:
            return _unique_id(response, await session.read_body(response))

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        """Stream an answer; the service ignores the model name."""
        base = (call.base_url or cls.api_base).rstrip("/")
        headers = _browser_headers(cls.url)
        async with browser_session(call, base, provider=cls.name, headers=headers, impersonate=cls.impersonate) as http:
            unique_id = await cls.grab_token(http, base_url=base)
            body = {"conversationId": _random_id(), "prompt": format_prompt(request.message_dicts())}
            async with http.request(
                "POST", f"{base}/aichatonline/api/chat/gpt", json=body, headers={"UniqueId": unique_id}
            ) as response:
                if response.status >= 300:
                    raise await http.status_error(response)
                decoder = NDJSONDecoder()
                async for item in http.iter_decoded(response, decoder):
                    data = item.get("data") if isinstance(item, dict) else None
                    message = data.get("message") if isinstance(data, dict) else None
                    if isinstance(message, str):
                        yield TextDelta(message)
                if decoder.skipped:
                    log.debug("AiChatOnline: skipped %d malformed lines", decoder.skipped)


def _browser_headers(site: str) -> dict[str, str]:
    return {"origin": site, "referer": f"{site}/", "user-agent": BROWSER_USER_AGENT}


def _unique_id(response: Response, text: str) -> str:
    if response.status >= 300:
        raise error_for_response(response.status, text, response.headers, during="fetching a unique id")
    try:
        data = json.loads(text).get("data")
    except (ValueError, AttributeError):
        raise ProtocolError(f"the unique-id reply is not JSON: {clip(text, 80)!r}") from None
    if not isinstance(data, str) or not data:
        raise ProtocolError("the unique-id reply has no id")
    return data
