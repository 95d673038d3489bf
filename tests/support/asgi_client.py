"""Drive the gateway's ASGI app in this process, as uvicorn would: requests, and the lifespan.

``ASGIClient(app)`` sends one request at a time and collects the response; the client stays
connected until the answer is complete, and a message the app sends after that is kept in
``late_messages`` (and refused, as uvicorn refuses it). ``async with ASGIClient(app)`` also runs
the app's lifespan (startup on entry, shutdown on exit).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = ["ASGIClient", "Response"]

HELLO = [{"role": "user", "content": "Hello"}]


class Response:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


class ASGIClient:
    """Requests to an ASGI app in this process; the response collected as uvicorn would send it."""

    #: Called with (method, path, response) for every response collected (the OpenAI schema check
    #: of tests/support/openai_schema.py adds itself here for each test).
    observers: ClassVar[list[Callable[[str, str, Response], None]]] = []

    def __init__(self, app: Any) -> None:
        self.app = app
        self.late_messages: list[dict[str, Any]] = []  # sent after the response was complete
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ASGIClient:
        self._lifespan = asyncio.create_task(self.app({"type": "lifespan"}, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        assert (await asyncio.wait_for(self._outbox.get(), 30))["type"] == "lifespan.startup.complete"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        assert (await asyncio.wait_for(self._outbox.get(), 30))["type"] == "lifespan.shutdown.complete"
        assert self._lifespan is not None
        await self._lifespan

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: list[tuple[bytes, bytes]] | None = None) -> Response:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()), *(headers or [])],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000)}
        answered = asyncio.Event()
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop(0)
            await answered.wait()  # the client stays until the answer is complete
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []
        complete = False

        async def send(message: Any) -> None:
            nonlocal complete  # like uvicorn's, it returns without yielding while the buffers have room
            if complete:
                self.late_messages.append(dict(message))
                raise RuntimeError("Unexpected ASGI message sent, after response already completed.")
            sent.append(dict(message))
            if message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
                answered.set()

        try:
            await self.app(scope, receive, send)
        finally:
            answered.set()
        start = next(m for m in sent if m["type"] == "http.response.start")
        response = Response(start["status"], dict(start.get("headers", [])),
                            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
        for observe in self.observers:
            observe(method, path, response)
        return response

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        response = await self.request("POST", path, body)
        return response.status, response.body

    async def get(self, path: str) -> tuple[int, Any]:
        """A GET whose answer is JSON: (status, the decoded body)."""
        response = await self.request("GET", path)
        return response.status, response.json()

    async def chat(self, model: str, *, stream: bool = False) -> Response:
        body = json.dumps({"model": model, "messages": HELLO, "stream": stream}).encode()
        return await self.request("POST", "/v1/chat/completions", body)
