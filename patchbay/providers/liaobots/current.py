"""Liaobots, current generation: a web chat service with an auth-code session.

Protocol: log in to get a session cookie, exchange it for an auth code at ``/api/user``
(docs/protocols.md#liaobots-auth-flow), then chat at ``/api/chat`` with the code in
``x-auth-code`` (docs/protocols.md#liaobots-chat-request); the answer comes as server-sent events
``data: {"content": ...}`` ending at EOF (docs/protocols.md#liaobots-stream-format). Auth codes
come from a :class:`~patchbay.secrets.pool.CredentialPool` (codes the user gave, then fetched
ones); a rejected code is banned and the request retried with the next one, but only before any
text was delivered, so an answer is never repeated (docs/protocols.md#liaobots-recovery).
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar

from patchbay.chat.context import count_chars, fit_messages
from patchbay.chat.messages import content_text
from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import (
    AuthError,
    PaymentRequired,
    ProtocolError,
    SessionRejected,
)
from patchbay.events import StreamEvent, TextDelta
from patchbay.net.cookiejar import CookieJar
from patchbay.net.decoders import SSEDecoder
from patchbay.net.session import BROWSER_USER_AGENT, HTTPSession, error_for_response
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin
from patchbay.providers.capabilities import Capabilities
from patchbay.providers.catalog import FREE, ModelRecord
from patchbay.providers.web import DEFAULT_IMPERSONATE, browser_session
from patchbay.redact import clip
from patchbay.secrets.pool import CredentialPool

__all__ = ["Liaobots"]

log = logging.getLogger("patchbay.providers.liaobots.current")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
#: The errors that mean "this auth code or session is no good": try another code
#: (docs/protocols.md#liaobots-recovery).
AUTH_FAILURES = (AuthError, PaymentRequired)


def _model(id: str, name: str, provider: str, max_length: int, token_limit: int, context: str) -> dict[str, Any]:
    return {"id": id, "name": name, "model": name, "provider": provider,
            "maxLength": max_length, "tokenLimit": token_limit, "context": context}


#: The service's model records, sent verbatim as the ``model`` field of a chat request.
MODELS: dict[str, dict[str, Any]] = {
    m["id"]: m
    for m in (
        _model("gpt-4o-2024-08-06", "GPT-4o", "OpenAI", 260000, 126000, "128K"),
        _model("gpt-4o-mini-2024-07-18", "GPT-4o-Mini", "OpenAI", 260000, 126000, "128K"),
        _model("gpt-4-turbo-2024-04-09", "GPT-4-Turbo", "OpenAI", 260000, 126000, "128K"),
        _model("claude-3-5-sonnet-20240620", "Claude-3.5-Sonnet", "Anthropic", 800000, 200000, "200K"),
        _model("claude-3-haiku-20240307", "Claude-3-Haiku", "Anthropic", 800000, 200000, "200K"),
        _model("gemini-1.5-pro-latest", "Gemini-1.5-Pro", "Google", 4000000, 1000000, "1024K"),
        _model("gemini-1.5-flash-latest", "Gemini-1.5-Flash", "Google", 4000000, 1000000, "1024K"),
    )
}


class Liaobots(AsyncGeneratorProvider, ProviderModelMixin):
    """Liaobots chat (current generation); auth codes from ``auth=`` or ``LIAOBOTS_AUTH_CODES``."""

    url = "https://liaobots.site"
    api_base: ClassVar[str] = "https://liaobots.work"
    working = True
    needs_auth = False
    supports_stream = True
    prices = FREE  # a free web chat service
    supports_message_history = True
    supports_system_message = True
    verify_ssl = False  # the service's certificate was never verifiable (docs/protocols.md#liaobots-hosts)
    max_auth_attempts: ClassVar[int] = 3
    fits_context = True  # to the model's maxLength, in characters
    text_only = True  # tools and JSON output by emulation; history rendered as text
    features = Capabilities.emulated_output()

    default_model = "gpt-4o-2024-08-06"
    models: ClassVar[list[str]] = list(MODELS)
    model_data: ClassVar[dict[str, dict[str, Any]]] = MODELS
    model_aliases: ClassVar[dict[str, str]] = {
        "gpt-4o": "gpt-4o-2024-08-06",
        "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
        "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
        "claude-3.5-sonnet": "claude-3-5-sonnet-20240620",
        "claude-3-haiku": "claude-3-haiku-20240307",
        "gemini-pro": "gemini-1.5-pro-latest",
        "gemini-flash": "gemini-1.5-flash-latest",
    }

    auth_codes: ClassVar[CredentialPool] = CredentialPool("Liaobots", env_var="LIAOBOTS_AUTH_CODES")
    cookies: ClassVar[CookieJar] = CookieJar()
    impersonate: ClassVar[str | None] = DEFAULT_IMPERSONATE  # the browser profile for https sites

    @classmethod
    def model_records(cls) -> list[ModelRecord]:
        return [cls.model_record(m, context_window=r["tokenLimit"], max_chars=r["maxLength"])
                for m, r in cls.model_data.items()]

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        """Stream an answer; ``call.auth`` adds the user's auth code(s), comma-separated."""
        base = (call.base_url or cls.api_base).rstrip("/")
        cls.auth_codes.add(call.auth)
        record = cls.model_data[call.model]
        messages = request.message_dicts()
        system = [m for m in messages if m.get("role") == "system"]
        history = fit_messages(messages, record["maxLength"], count_chars, unit="characters")
        body = {
            "conversationId": str(uuid.uuid4()),
            "model": record,
            "messages": [m for m in history if m.get("role") != "system"],
            "key": "",
            "prompt": "\n".join(content_text(m) for m in system) or DEFAULT_SYSTEM_PROMPT,
        }
        async with browser_session(call, base, provider=cls.name, headers=_headers(cls.url),
                                   impersonate=cls.impersonate, cookies=cls.cookies, verify_ssl=cls.verify_ssl) as http:
            last_error: AuthError | PaymentRequired | None = None
            for attempt in range(1, cls.max_auth_attempts + 1):
                code: str | None = None
                mark = call.transcript.mark()
                try:
                    code = await cls.ensure_auth_code(http, base)
                    async with aclosing(cls._chat(http, base, code, body)) as texts:
                        async for text in texts:
                            yield TextDelta(text)
                    return
                except AUTH_FAILURES as exc:
                    if call.transcript.since(mark):
                        raise  # never retry after text: the base class reports StreamInterrupted
                    log.info("Liaobots rejected an auth code (attempt %d): %s", attempt, exc.message)
                    if code is not None:
                        cls.auth_codes.ban(code)
                    cls.cookies.clear(base)
                    last_error = exc
            assert last_error is not None
            raise last_error

    @classmethod
    async def ensure_auth_code(cls, http: HTTPSession, base_url: str | None = None) -> str:
        """The auth code to use: the pool's current one, or a freshly fetched one."""
        code = cls.auth_codes.current()
        if code is not None:
            return code
        return await cls.initialize_auth_code(http, base_url)

    @classmethod
    async def initialize_auth_code(cls, http: HTTPSession, base_url: str | None = None) -> str:
        """Log in and fetch a new auth code; it joins the pool as its current code.

        The steps and their failures: docs/protocols.md#liaobots-auth-flow, docs/protocols.md#liaobots-errors."""
        base = (base_url or cls.api_base).rstrip("/")
        token = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))
        async with http.request("POST", f"{base}/recaptcha/api/login", data={"token": token}) as response:
            if response.status >= 300:
                raise await http.status_error(response, "login")
        async with http.request("POST", f"{base}/api/user", json={"authcode": ""}) as response:
            text = await http.read_body(response)
            if response.status >= 300:
                raise error_for_response(response.status, text, response.headers, during="fetching an auth code")
            if _is_html(text):
                raise SessionRejected("the service answered the auth-code request with a captcha page")
            # The reply's Content-Type is unreliable: the text is parsed as JSON whatever it says.
            try:
                code = json.loads(text).get("authCode")
            except (ValueError, AttributeError):
                raise ProtocolError(f"the auth-code reply is not JSON: {clip(text, 80)!r}") from None
        if not isinstance(code, str) or not code:
            raise AuthError("the service returned an empty auth code")
        cls.auth_codes.add(code)
        return code

    @classmethod
    async def _chat(cls, http: HTTPSession, base: str, code: str, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        async with http.request("POST", f"{base}/api/chat", json=body, headers={"x-auth-code": code}) as response:
            if response.status >= 300:
                raise await http.status_error(response, "chat")
            if "html" in response.headers.get("content-type", ""):
                raise SessionRejected("the service answered with a captcha page instead of the answer")
            decoder = SSEDecoder()
            # The first bytes, kept to recognise a captcha page or an `Error` body in place of the
            # stream (docs/protocols.md#liaobots-errors).
            head = b""
            got_text = False
            async for chunk in http.iter_bytes(response):
                if len(head) < 64:
                    head += chunk[: 64 - len(head)]
                    if not got_text and head.lstrip()[:1] == b"<":
                        raise SessionRejected("the service answered with a captcha page instead of the answer")
                for event in decoder.decode(chunk):
                    text = _content(event.data)
                    if text:
                        got_text = True
                        yield text
            for event in decoder.flush():  # no end marker: EOF ends it (docs/protocols.md#liaobots-stream-format)
                text = _content(event.data)
                if text:
                    got_text = True
                    yield text
            if not got_text:
                if head.strip() == b"Error":
                    raise SessionRejected("the service answered `Error` instead of the answer")
                start = clip(head.decode("utf-8", errors="replace"), 40)
                raise ProtocolError(f"the service sent no answer text (body starts {start!r})")


def _content(data: str) -> str | None:
    """The text delta of one event, or None for events that carry none (ignored)."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        log.debug("Liaobots: skipped a malformed event: %.80r", data)
        return None
    content = payload.get("content") if isinstance(payload, dict) else None
    return content if isinstance(content, str) else None


def _headers(site: str) -> dict[str, str]:
    return {"origin": site, "referer": f"{site}/", "user-agent": BROWSER_USER_AGENT}


def _is_html(text: str) -> bool:
    head = text.lstrip()[:200].lower()
    return head.startswith("<!doctype html") or head.startswith("<html") or "<html" in head
