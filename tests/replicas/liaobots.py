"""Replica of the current-generation Liaobots API (docs/protocols.md#liaobots-current-generation).

Login sets a session cookie, ``/api/user`` trades it for an auth code, ``/api/chat`` streams
``data: {"content": ...}`` events without an end marker.  Auth codes can be rejected on demand
(``rejected_codes``, ``fail_chats``, ``free_messages``) to exercise the providers' recovery path.
Replies can be scripted (``replies``, one text per chat, in order) to exercise emulated tools
and JSON output. Like the real service, it takes only text: a message whose ``content`` is not
a string, or whose role is not user or assistant (system text goes in ``prompt``), is answered 400.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection
from typing import Any, ClassVar

from aiohttp import web

from tests.replicas.base import (
    BROWSER_CHECK_SCENARIOS,
    DEFAULT_ANSWER,
    TRANSPORT_SCENARIOS,
    ReplicaServer,
    split_deltas,
    sse,
)

#: The HTML page the service served instead of JSON / a stream when it wanted a captcha solved.
CAPTCHA_PAGE = (
    '<!DOCTYPE html><html coupert-item="7b1d2c"><head><title>Just a moment...</title></head>'
    "<body><p>Please complete the captcha to continue.</p></body></html>"
)

UNAUTHORIZED_BODY = '{"message":"401 Unauthorized"}'

#: The roles of ``messages``: the system prompt travels in ``prompt``, tool results as user text.
ROLES = frozenset({"user", "assistant"})

MODEL_KEYS = frozenset({"id", "name", "model", "provider", "maxLength", "tokenLimit", "context"})


def is_uuid4(value: object) -> bool:
    """True for the canonical string form of a version-4 UUID."""
    if not isinstance(value, str):
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value.lower()


def check_messages(server: ReplicaServer, messages: object, roles: Collection[str] | None = None) -> None:
    """A non-empty list of ``{"role": str, "content": str}`` objects (``roles``: the roles allowed)."""
    server.check(isinstance(messages, list) and messages, "messages must be a non-empty list")
    assert isinstance(messages, list)
    for i, message in enumerate(messages):
        server.check(
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str),
            f"messages[{i}] is not {{role: str, content: str}}: {message!r:.200}",
        )
        if roles is not None:
            server.check(message["role"] in roles,
                         f"messages[{i}].role is {message['role']!r}; this service takes {', '.join(sorted(roles))}")


class LiaobotsReplica(ReplicaServer):
    """Current-generation Liaobots: ``/recaptcha/api/login``, ``/api/user``, ``/api/chat``.

    Attributes: ``answer`` (streamed text), ``replies`` (scripted texts: each chat streams the
    first one and removes it; ``answer`` once none is left), ``valid_codes`` (codes accepted without being issued,
    i.e. user-supplied ones), ``issued_codes``, ``rejected_codes`` (chat answers 401 for these),
    ``fail_chats`` (the next N chats get 401), ``free_messages`` (chats allowed per code before
    401; None = unlimited), ``chats_by_code``, ``sessions`` (session cookies set by login),
    counters ``login_count``/``user_count``/``chat_count``.
    """

    SCENARIOS: ClassVar[frozenset[str]] = frozenset(
        {
            "normal",
            "user_401",
            "user_402",
            "empty_authcode",
            "captcha",
            "user_captcha",
            "error_body",
            "chat_401",
            "chat_402",
            "chat_500",
            "malformed",
        }
        | TRANSPORT_SCENARIOS
        | BROWSER_CHECK_SCENARIOS
    )
    COOKIE_NAME: ClassVar[str] = "lb_session"

    def __init__(self, scenario: str = "normal") -> None:
        super().__init__(scenario)
        self.answer = DEFAULT_ANSWER
        self.replies: list[str] = []
        self.valid_codes: set[str] = set()
        self.issued_codes: list[str] = []
        self.rejected_codes: set[str] = set()
        self.fail_chats = 0
        self.free_messages: int | None = None
        self.chats_by_code: dict[str, int] = {}
        self.sessions: set[str] = set()
        self.login_count = 0
        self.user_count = 0
        self.chat_count = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/recaptcha/api/login", self.login),
            web.post("/api/user", self.user),
            web.post("/api/chat", self.chat),
        ]

    # ----------------------------------------------------------------- auth codes

    def known_code(self, code: str) -> bool:
        """A code this replica issued, or one configured as valid or rejected."""
        return code in self.issued_codes or code in self.valid_codes or code in self.rejected_codes

    def code_is_good(self, code: str) -> bool:
        """Known, not rejected, and not out of free messages."""
        if not self.known_code(code) or code in self.rejected_codes:
            return False
        return self.free_messages is None or self.chats_by_code.get(code, 0) < self.free_messages

    def issue_code(self) -> str:
        """Mint a fresh auth code."""
        code = f"lb{len(self.issued_codes) + 1}-{secrets.token_hex(6)}"
        self.issued_codes.append(code)
        return code

    # ----------------------------------------------------------------- endpoints

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Accept ``token=<20 chars>`` (form-encoded or, as clients did by accident, labelled JSON;
        docs/protocols.md#liaobots-auth-flow)."""
        self.login_count += 1
        rec = self.recorded(request)
        self.check(
            request.content_type in ("application/x-www-form-urlencoded", "application/json"),
            f"login content-type is {request.content_type!r}",
        )
        text = rec.text
        self.check(text.startswith("token=") and "&" not in text, f"login body is not token=...: {text!r}")
        token = text.removeprefix("token=")
        self.check(len(token) == 20, f"login token must be 20 characters, got {len(token)}")
        session = secrets.token_hex(16)
        self.sessions.add(session)
        resp = web.json_response({"code": 200})
        resp.set_cookie(self.COOKIE_NAME, session, path="/")
        return resp

    async def user(self, request: web.Request) -> web.StreamResponse:
        """Trade the session (and maybe a cached code) for an auth code."""
        self.user_count += 1
        rec = self.recorded(request)
        body = self.json_body(request)
        self.check(isinstance(body.get("authcode"), str), f"/api/user body needs authcode string: {body!r}")
        cookie = rec.cookies.get(self.COOKIE_NAME)
        self.check(cookie in self.sessions, "no session cookie from /recaptcha/api/login")
        match self.scenario:
            case "user_401":
                return web.Response(status=401, text=UNAUTHORIZED_BODY, content_type="application/json")
            case "user_402":
                return web.Response(status=402, text="Error")
            case "user_captcha":
                return web.Response(text=CAPTCHA_PAGE, content_type="text/html")
            case "empty_authcode":
                code = ""
            case _:
                cached = body["authcode"]
                code = cached if cached and self.code_is_good(cached) else self.issue_code()
        # The real service labelled this JSON reply unreliably; clients must parse the text
        # (docs/protocols.md#liaobots-auth-flow).
        return web.Response(text=f'{{"authCode": "{code}"}}', content_type="text/html")

    def _check_chat(self, request: web.Request) -> str:
        code = request.headers.get("x-auth-code")
        self.check(code, "missing x-auth-code header")
        assert code is not None
        self.check(self.known_code(code), f"x-auth-code {code!r} was never issued nor configured valid")
        body = self.json_body(request)
        self.check(
            is_uuid4(body.get("conversationId")),
            f"conversationId is not a uuid4: {body.get('conversationId')!r}",
        )
        model = body.get("model")
        self.check(isinstance(model, dict), f"model must be an object: {model!r}")
        assert isinstance(model, dict)
        self.check(set(model) == MODEL_KEYS, f"model keys are {sorted(model)}, expected {sorted(MODEL_KEYS)}")
        check_messages(self, body.get("messages"), roles=ROLES)
        self.check(body.get("key") == "", f"key must be empty string: {body.get('key')!r}")
        self.check(isinstance(body.get("prompt"), str), f"prompt must be a string: {body.get('prompt')!r}")
        return code

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Stream the answer as ``data: {"content": ...}`` events; EOF ends the stream."""
        self.chat_count += 1
        code = self._check_chat(request)
        if self.fail_chats > 0:
            self.fail_chats -= 1
            return self.unauthorized()
        if not self.code_is_good(code):
            return self.unauthorized()
        self.chats_by_code[code] = self.chats_by_code.get(code, 0) + 1
        match self.scenario:
            case "captcha":
                return web.Response(text=CAPTCHA_PAGE, content_type="text/html")
            case "error_body":
                return web.Response(text="Error")
            case "chat_401":
                return self.unauthorized()
            case "chat_402":
                return web.Response(status=402, text="Error")
            case "chat_500":
                return web.Response(status=500, text="Error")
        text = self.replies.pop(0) if self.replies else self.answer
        events = [sse({"content": delta}) for delta in split_deltas(text, 5)]
        if self.scenario == "malformed":
            events = self.malformed(events)
        return await self.send(request, events, content_type="text/event-stream")

    def chat_bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every ``/api/chat`` request, in order."""
        return [r.json for r in self.requests_to("/api/chat") if isinstance(r.json, dict)]

    @staticmethod
    def unauthorized() -> web.Response:
        return web.Response(status=401, text=UNAUTHORIZED_BODY, content_type="application/json")

    @staticmethod
    def malformed(events: list[bytes]) -> list[bytes]:
        """Interleave garbage that a tolerant client skips; the valid events still spell the answer."""
        garbage: list[bytes] = [
            b"data: {not json\n\n",
            b'data: {"other": 1}\n\n',
            b": keep-alive comment\n\n",
            b"event: ping\n\n",
            b"data: [1, 2, 3]\n\n",
            b"total garbage line\n\n",
            b"data: \n\n",
        ]
        mixed: list[bytes] = []
        for i, event in enumerate(events):
            mixed.append(garbage[i % len(garbage)])
            mixed.append(event)
        mixed.extend(garbage[len(events) % len(garbage) :])
        return mixed
