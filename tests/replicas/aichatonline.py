"""Replica of the AiChatOnline API (docs/protocols.md#aichatonline).

A cache-busted ``GET`` hands out a unique id; the chat endpoint takes it in the ``UniqueId``
header and answers newline-delimited JSON ``{"data": {"message": ...}}`` objects until EOF.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import ClassVar

from aiohttp import web

from tests.replicas.base import (
    BROWSER_CHECK_SCENARIOS,
    DEFAULT_ANSWER,
    TRANSPORT_SCENARIOS,
    ReplicaServer,
    split_deltas,
)

CANVAS_RE = re.compile(r"^-[a-z0-9]{10}$")
CONVERSATION_RE = re.compile(r"^[a-z0-9]{10}$")

TOKEN_PATH = "/api/v1/user/getUniqueId"
CHAT_PATH = "/aichatonline/api/chat/gpt"


def ndjson(obj: object) -> bytes:
    """One JSON line, non-ASCII left raw."""
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


class AiChatOnlineReplica(ReplicaServer):
    """AiChatOnline: ``GET /api/v1/user/getUniqueId`` and ``POST /aichatonline/api/chat/gpt``.

    Attributes: ``answer``, ``issued_ids`` (unique ids handed out), ``canvas_values`` (every
    canvas seen, to detect cache-busting failures), ``prompts`` (prompt of each accepted chat),
    ``token_count``, ``chat_count``.
    """

    SCENARIOS: ClassVar[frozenset[str]] = frozenset(
        {"normal", "malformed", "token_500", "chat_500"} | TRANSPORT_SCENARIOS | BROWSER_CHECK_SCENARIOS
    )

    def __init__(self, scenario: str = "normal") -> None:
        super().__init__(scenario)
        self.answer = DEFAULT_ANSWER
        self.issued_ids: list[str] = []
        self.canvas_values: list[str] = []
        self.prompts: list[str] = []
        self.token_count = 0
        self.chat_count = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.get(TOKEN_PATH, self.unique_id), web.post(CHAT_PATH, self.chat)]

    async def unique_id(self, request: web.Request) -> web.StreamResponse:
        """Hand out a unique id; the canvas parameter must be fresh every time."""
        self.token_count += 1
        canvas = request.query.get("canvas", "")
        self.check(CANVAS_RE.fullmatch(canvas), f"canvas {canvas!r} does not match -[a-z0-9]{{10}}")
        seen = canvas in self.canvas_values
        self.canvas_values.append(canvas)
        self.check(not seen, f"canvas {canvas!r} repeated (cache busting broken)")
        if self.scenario == "token_500":
            return web.Response(status=500, text="Internal Server Error")
        unique = secrets.token_hex(16)
        self.issued_ids.append(unique)
        return web.json_response({"data": unique, "code": 200, "message": "success"})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Stream NDJSON deltas for a request carrying an issued ``UniqueId``."""
        self.chat_count += 1
        unique = request.headers.get("UniqueId")
        self.check(unique, "missing UniqueId header")
        self.check(unique in self.issued_ids, f"UniqueId {unique!r} was never issued")
        body = self.json_body(request)
        conversation = body.get("conversationId")
        self.check(
            isinstance(conversation, str) and CONVERSATION_RE.fullmatch(conversation),
            f"conversationId {conversation!r} is not 10 [a-z0-9]",
        )
        prompt = body.get("prompt")
        self.check(isinstance(prompt, str) and prompt, f"prompt must be a non-empty string: {prompt!r}")
        assert isinstance(prompt, str)
        self.prompts.append(prompt)
        if self.scenario == "chat_500":
            return web.Response(status=500, text="Internal Server Error")
        lines = [ndjson({"data": {"message": delta}}) for delta in split_deltas(self.answer, 5)]
        if self.scenario == "malformed":
            lines = self.malformed(lines)
        return await self.send(request, lines, content_type="text/plain; charset=utf-8")

    @staticmethod
    def malformed(lines: list[bytes]) -> list[bytes]:
        """Mix in unparsable lines and objects lacking the keys; valid lines still spell the answer."""
        garbage = [
            b"{not json\n",
            ndjson({"data": {}}),
            ndjson({"other": {"message": "nope"}}),
            ndjson({"data": "flat string"}),
            b"\n",
            ndjson([1, 2]),
            ndjson({"data": {"msg": "wrong key"}}),
        ]
        mixed: list[bytes] = []
        for i, line in enumerate(lines):
            mixed.append(garbage[i % len(garbage)])
            mixed.append(line)
        mixed.extend(garbage[len(lines) % len(garbage) :])
        return mixed
