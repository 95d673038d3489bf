"""Stored Responses, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

A Response created with ``store`` (the default, as at OpenAI) is kept with its conversation (the
chat messages the next request in the chain starts from) for a time to live. :class:`ResponseStore`
is what the server needs; two stores implement it:

- :class:`MemoryResponseStore`: one process, bounded in entries and in bytes (least recently used
  first out), entries expire after their TTL;
- :class:`SQLiteResponseStore`: a table of its own (``responses``) in a SQLite file (the request
  log's, or any other), shared by the server's processes, surviving restarts. Expired rows are
  pruned as new ones are written. Blocking calls run in a worker thread; the database is in WAL
  mode, and a write lock held by another connection is waited for ``lock_wait`` seconds at most.

Conversations are stored as sent (not redacted, unlike the request log's rows): the next request
in the chain replays them to the model, so they must stay exactly what the caller sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from patchbay.chat.request import ChatCompletionRequest
from patchbay.chat.responses import ResponseRendering, decode_responses_request, response_id
from patchbay.errors import InvalidRequest, PatchbayError
from patchbay.redis_link import RedisLink

__all__ = ["MemoryResponseStore", "RedisResponseStore", "ResponseStore", "ResponseTurn", "SQLiteResponseStore",
           "StoredResponse", "begin_response"]

log = logging.getLogger("patchbay.requestlog.responses")

MAX_ENTRIES = 10_000  # responses a memory store keeps at most
MAX_BYTES = 256 * 1024 * 1024  # encoded bytes a memory store keeps at most
LOCK_WAIT = 5.0  # seconds a SQLite store waits for another connection's write lock
PRUNE_ROWS = 1_000  # expired rows one write deletes at most (the next write goes on)

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_KEPT = ("completed", "incomplete")  # a finished answer's status; a failed one is not kept


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A stored Response (the JSON object ``GET`` returns) and its conversation (chat messages)."""

    id: str
    response: dict[str, Any]
    conversation: list[dict[str, Any]]
    created: float  # Unix seconds (of the store's clock)
    expires: float


class ResponseStore(Protocol):
    """Where Responses are kept for ``previous_response_id``."""

    async def put(self, response_id: str, response: dict[str, Any], conversation: list[dict[str, Any]],
                  ttl: float) -> None:
        """Keep ``response`` and ``conversation`` for ``ttl`` seconds (replacing one with the same id)."""
        ...

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored Response, or None when there is none or it expired."""
        ...


class MemoryResponseStore:
    """Responses in this process's memory: at most ``max_entries`` and ``max_bytes`` (encoded JSON),
    least recently used out first; an entry bigger than ``max_bytes`` alone is not kept."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float, float]] = OrderedDict()  # id -> (json, created, expires)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    async def put(self, response_id: str, response: dict[str, Any], conversation: list[dict[str, Any]],
                  ttl: float) -> None:
        self._remove(response_id)
        data = _encode([response, conversation])
        if ttl <= 0 or len(data) > self.max_bytes:
            if ttl > 0:
                log.warning("response %s is %d bytes, more than the store keeps (%d): it cannot be chained",
                            response_id, len(data), self.max_bytes)
            return
        now = self._clock()
        self._entries[response_id] = (data, now, now + ttl)
        self._bytes += len(data)
        if len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._evict(now)

    async def get(self, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        data, created, expires = entry
        if expires <= self._clock():
            self._remove(response_id)
            return None
        self._entries.move_to_end(response_id)
        response, conversation = _decode(data)
        return StoredResponse(response_id, response, conversation, created, expires)

    async def delete(self, response_id: str) -> bool:
        """Forget a response; False when there was none."""
        return self._remove(response_id)

    def _remove(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= len(entry[0])
        return True

    def _evict(self, now: float) -> None:
        """Over a bound: expired entries go first, then the least recently used."""
        for expired in [key for key, (_, _, expires) in self._entries.items() if expires <= now]:
            self._remove(expired)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,           -- Unix seconds
        expires REAL NOT NULL,           -- Unix seconds; the row is gone for get() from then on
        response TEXT NOT NULL,          -- JSON: the Response object
        conversation TEXT NOT NULL       -- JSON: the chat messages the next response starts from
    )""",
    "CREATE INDEX IF NOT EXISTS responses_expires ON responses (expires)",
)


class SQLiteResponseStore:
    """Responses in the ``responses`` table of the SQLite file ``path`` (created when missing).

    Several processes may share the file. Each write first deletes up to ``prune_rows`` expired
    rows. When another connection holds the write lock past ``lock_wait`` seconds, :meth:`put`
    logs and drops the row (the answer was already delivered; only its chaining is lost), and
    :meth:`get` raises a :class:`~patchbay.errors.PatchbayError`, never a wrong "not found".
    """

    def __init__(self, path: str | Path, *, lock_wait: float = LOCK_WAIT, prune_rows: int = PRUNE_ROWS,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.lock_wait = lock_wait
        self.prune_rows = prune_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        """The connection, opened (and the table made) on first use; call with the lock held."""
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.lock_wait, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against a crashed process
                for statement in _SCHEMA:
                    db.execute(statement)
            except BaseException:
                db.close()
                raise
            self._connection = db
        return self._connection

    async def put(self, response_id: str, response: dict[str, Any], conversation: list[dict[str, Any]],
                  ttl: float) -> None:
        row = (response_id, _encode(response).decode(), _encode(conversation).decode())
        try:
            await asyncio.to_thread(self._put, row, ttl)
        except sqlite3.Error as exc:
            log.warning("response %s was not stored in %s (%s): it cannot be chained", response_id, self.path,
                        type(exc).__name__)

    def _put(self, row: tuple[str, str, str], ttl: float) -> None:
        now = self._clock()
        with self._lock:
            db = self._db()
            db.execute("DELETE FROM responses WHERE rowid IN "
                       "(SELECT rowid FROM responses WHERE expires <= ? LIMIT ?)", (now, self.prune_rows))
            if ttl > 0:
                response_id, response, conversation = row
                db.execute("INSERT OR REPLACE INTO responses (id, created, expires, response, conversation) "
                           "VALUES (?, ?, ?, ?, ?)", (response_id, now, now + ttl, response, conversation))

    async def get(self, response_id: str) -> StoredResponse | None:
        try:
            return await asyncio.to_thread(self._get, response_id)
        except sqlite3.Error as exc:
            raise PatchbayError(f"the response store {self.path.name} could not be read "
                                f"({type(exc).__name__}); try again") from None

    def _get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db().execute("SELECT created, expires, response, conversation FROM responses "
                                     "WHERE id = ? AND expires > ?", (response_id, self._clock())).fetchone()
        if row is None:
            return None
        created, expires, response, conversation = row
        return StoredResponse(response_id, _decode(response), _decode(conversation), created, expires)

    async def delete(self, response_id: str) -> bool:
        """Forget a response; False when there was none."""
        return await asyncio.to_thread(self._delete, response_id)

    def _delete(self, response_id: str) -> bool:
        with self._lock:
            return self._db().execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def count(self) -> int:
        """How many rows the table holds (expired ones not yet pruned included)."""
        with self._lock:
            return int(self._db().execute("SELECT count(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the connection (a later call opens it again)."""
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._connection.close()
                self._connection = None


class RedisResponseStore:
    """Responses in Redis, shared by every worker and host: one JSON string per response under
    ``patchbay:{namespace}:response:{id}``, expiring with its TTL (so Redis does the pruning).

    While Redis is unreachable the store uses a :class:`MemoryResponseStore` of this process (a
    warning says so): answers go on, and chaining works for what this process stored meanwhile.
    """

    def __init__(self, url: str, *, namespace: str = "default", timeout: float = 0.5, retry_after: float = 5.0,
                 local: MemoryResponseStore | None = None) -> None:
        self._link = RedisLink(url, timeout=timeout, retry_after=retry_after, logger=log,
                               fallback="keeping responses in this process", restored="keeping responses in Redis")
        self._prefix = f"patchbay:{namespace}:response:"
        self._local = local if local is not None else MemoryResponseStore()

    async def put(self, response_id: str, response: dict[str, Any], conversation: list[dict[str, Any]],
                  ttl: float) -> None:
        now = time.time()
        record = _encode({"response": response, "conversation": conversation, "created": now, "expires": now + ttl})

        async def remote() -> None:
            await self._link.client().set(self._prefix + response_id, record, px=max(1, int(ttl * 1000)))

        await self._link.run(remote, lambda: self._local.put(response_id, response, conversation, ttl))

    async def get(self, response_id: str) -> StoredResponse | None:
        async def remote() -> StoredResponse | None:
            value = await self._link.client().get(self._prefix + response_id)
            if value is None:
                return await self._local.get(response_id)  # stored here while Redis was down
            data = _decode(value)
            return StoredResponse(response_id, data["response"], data["conversation"], data["created"],
                                  data["expires"])

        return await self._link.run(remote, lambda: self._local.get(response_id))

    async def close(self) -> None:
        """Close this event loop's Redis connections."""
        await self._link.close()


@dataclass(frozen=True, slots=True)
class ResponseTurn:
    """One ``/v1/responses`` request, ready to run: the chat request (with the stored history of
    ``previous_response_id`` before its input), the rendering that writes the answer, and
    ``keep``, to call once the answer is complete (it stores it when the request asked)."""

    chat: ChatCompletionRequest
    rendering: ResponseRendering
    keep: Callable[[], Awaitable[None]]


async def begin_response(body: bytes, store: ResponseStore, ttl: float) -> ResponseTurn:
    """Read a Responses request and find its history in ``store`` (InvalidRequest naming
    ``previous_response_id`` when it is not there)."""
    request = decode_responses_request(body)
    history = None
    if request.previous_response_id is not None:
        stored = await store.get(request.previous_response_id)
        if stored is None:
            raise InvalidRequest(f"previous response {request.previous_response_id!r} not found: it was made "
                                 f"without store, more than {ttl:g} s ago, or elsewhere", param="previous_response_id")
        history = stored.conversation
    chat = request.chat(history)
    rendering = ResponseRendering(request, response_id(), int(time.time()), history=history)

    async def keep() -> None:
        if request.store and rendering.status in _KEPT:
            await store.put(rendering.id, rendering.response(), rendering.conversation(), ttl)

    return ResponseTurn(chat, rendering, keep)
