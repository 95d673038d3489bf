"""Replica of the first-generation Liaobots API (docs/protocols.md#liaobots-legacy-first-generation).

One endpoint, ``POST /api/chat``, answering raw UTF-8 text in arbitrary chunks.  A wrong
``x-auth-code`` is answered like the real service did (status 200, body ``Error``); that is a
legitimate answer, not a shape violation.
"""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from tests.replicas.base import DEFAULT_ANSWER, TRANSPORT_SCENARIOS, ReplicaServer, split_deltas
from tests.replicas.liaobots import check_messages, is_uuid4

#: The two model records the first-generation client sent, keyed by public name.
LEGACY_MODELS: dict[str, dict[str, Any]] = {
    "gpt-4": {"id": "gpt-4", "name": "GPT-4", "maxLength": 24000, "tokenLimit": 8000},
    "gpt-3.5-turbo": {"id": "gpt-3.5-turbo", "name": "GPT-3.5", "maxLength": 12000, "tokenLimit": 4000},
}


class LiaobotsLegacyReplica(ReplicaServer):
    """First-generation Liaobots: ``POST /api/chat`` with ``x-auth-code`` equal to ``auth_code``.

    Attributes: ``answer`` (streamed text), ``auth_code`` (default ``"test-auth-code"``),
    ``chat_count``, ``bad_auth_count`` (requests answered ``Error`` because of a wrong code).
    Header checks: JSON content type, ``origin``, ``referer``, a browser user-agent (``Mozilla/...``).
    """

    SCENARIOS: ClassVar[frozenset[str]] = frozenset(
        {"normal", "bad_auth", "bad_auth_401", "chat_500"} | TRANSPORT_SCENARIOS
    )

    def __init__(self, scenario: str = "normal") -> None:
        super().__init__(scenario)
        self.answer = DEFAULT_ANSWER
        self.auth_code = "test-auth-code"
        self.chat_count = 0
        self.bad_auth_count = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/chat", self.chat)]

    def _check(self, request: web.Request) -> None:
        headers = request.headers
        for name in ("origin", "referer"):
            self.check(headers.get(name), f"missing {name} header")
        agent = headers.get("user-agent", "")
        self.check(agent.startswith("Mozilla/"), f"user-agent is not a browser's: {agent!r}")
        self.check(headers.get("x-auth-code"), "missing x-auth-code header")
        body = self.json_body(request)
        self.check(
            is_uuid4(body.get("conversationId")),
            f"conversationId is not a uuid4: {body.get('conversationId')!r}",
        )
        model = body.get("model")
        self.check(model in LEGACY_MODELS.values(), f"model is none of the two known records: {model!r}")
        check_messages(self, body.get("messages"))
        self.check(body.get("key") == "", f"key must be empty string: {body.get('key')!r}")
        self.check(isinstance(body.get("prompt"), str), f"prompt must be a string: {body.get('prompt')!r}")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Answer raw text; ``Error`` (200) for a wrong code or in the bad_auth scenario."""
        self.chat_count += 1
        self._check(request)
        if self.scenario == "bad_auth_401":
            return web.Response(status=401, text="Error")
        if self.scenario == "bad_auth" or request.headers["x-auth-code"] != self.auth_code:
            self.bad_auth_count += 1
            return web.Response(text="Error")
        if self.scenario == "chat_500":
            return web.Response(status=500, text="Error")
        pieces = [piece.encode() for piece in split_deltas(self.answer, 4)]
        return await self.send(request, pieces)
