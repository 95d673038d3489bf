"""The request log database: records, a background writer, and the queries ``patchbay logs`` uses.

Recording must not slow the request it records. :meth:`RequestLog.record` encodes the record as
one JSON row (a single call into msgspec, so nothing of the request is kept alive for later) and
appends it to a bounded in-memory backlog. A daemon thread wakes every ``batch_interval``
seconds, redacts what gathered and inserts it in one transaction. When the backlog is full a
record is dropped with one warning, never waited for. The database is in WAL mode: readers
(``patchbay logs``) never block the writer, several server processes can share one file, and a
process killed mid-write leaves the last committed transaction intact, never half a row.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from patchbay.errors import PatchbayError
from patchbay.events import EventStream
from patchbay.requestlog.migrations import migrate
from patchbay.secrets import redact, redact_json

__all__ = ["Exchange", "ProviderCheck", "RequestLog", "describe_error"]

log = logging.getLogger("patchbay.requestlog")

QUEUE_SIZE = 10_000  # records waiting for the writer; beyond this they are dropped
BATCH_SIZE = 500  # records per transaction at most
BATCH_INTERVAL = 0.05  # seconds the writer lets records gather once it has caught up
BUSY_TIMEOUT = 10.0  # seconds a connection waits for another process's write lock
CLOSE_TIMEOUT = 10.0


@dataclass(slots=True)
class Exchange:
    """One request and its answer. ``messages`` are as sent (dicts, or the server's structs)."""

    time: float  # when the request started, Unix seconds
    source: str  # cli, server or library
    messages: Any
    response: str = ""
    requested_model: str | None = None
    provider: str | None = None
    model: str | None = None
    conversation_id: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency: float | None = None  # seconds
    ttft: float | None = None  # seconds to the first chunk
    status: int | None = None  # HTTP status, for the server
    error: str | None = None
    fallbacks: Sequence[Any] = ()  # Fallback events (dicts once read back)
    options: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = ""  # the last user message's text (filled in when written)
    id: int | None = None  # assigned by the database

    @classmethod
    def from_stream(cls, events: EventStream, *, time: float, source: str, messages: Any,
                    requested_model: str | None, latency: float | None, ttft: float | None = None,
                    error: BaseException | None = None, conversation_id: str | None = None,
                    options: Mapping[str, Any] | None = None, status: int | None = None) -> Exchange:
        """The record of a finished (or failed) stream; ``error`` is what ended it early."""
        info = events.provider_info
        usage = events.usage
        provider = info.provider if info else getattr(error, "provider", None)
        return cls(time=time, source=source, messages=messages, response=events.text,
                   requested_model=requested_model, provider=provider,
                   model=info.model if info else getattr(error, "model", None) or requested_model,
                   conversation_id=conversation_id, finish_reason=events.finish_reason,
                   prompt_tokens=usage.prompt_tokens if usage else None,
                   completion_tokens=usage.completion_tokens if usage else None,
                   latency=latency, ttft=ttft, status=status,
                   error=None if error is None else describe_error(error),
                   fallbacks=list(events.fallbacks), options=dict(options or {}))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return msgspec.to_builtins(asdict(self))  # type: ignore[no-any-return]


@dataclass(slots=True)
class ProviderCheck:
    """The result of probing one provider with a tiny prompt (``patchbay providers check``)."""

    time: float
    provider: str
    model: str | None
    ok: bool
    ttft: float | None = None
    total: float | None = None
    error: str | None = None


def describe_error(error: BaseException) -> str:
    """One line for the log: the error's class and its (redacted) message."""
    if isinstance(error, PatchbayError):
        return f"{type(error).__name__}: {error.message}"
    if isinstance(error, KeyboardInterrupt | GeneratorExit | asyncio.CancelledError):
        return "Interrupted: the request was stopped before it finished"
    return f"{type(error).__name__}: {redact(str(error))}"


_STOP = object()

_ROW_FIELDS = ("time", "source", "conversation_id", "requested_model", "provider", "model", "prompt", "messages",
               "options", "response", "finish_reason", "prompt_tokens", "completion_tokens", "latency", "ttft",
               "status", "error", "fallbacks")
_NESTED = frozenset({7, 8, 17})  # messages, options, fallbacks: stored as JSON text
#: Rows per INSERT statement. Many rows per statement means one sqlite3_step, and so one release of
#: the GIL, per chunk: executemany() releases it once per row, and under load each re-acquisition
#: waits for the event loop's thread to yield (up to the 5 ms switch interval). 50 rows x 18
#: columns stays under SQLite's oldest variable limit (999).
ROWS_PER_STATEMENT = 50
_encode = msgspec.json.Encoder(enc_hook=repr).encode  # anything unexpected is stored as its repr
_decode_row = msgspec.json.Decoder(tuple[tuple(msgspec.Raw if i in _NESTED else Any  # type: ignore[misc]
                                               for i in range(len(_ROW_FIELDS)))]).decode


def _insert(rows: int) -> str:
    one = "(" + ", ".join("?" * len(_ROW_FIELDS)) + ")"
    return f"INSERT INTO exchanges ({', '.join(_ROW_FIELDS)}) VALUES " + ", ".join([one] * rows)


_INSERT_CHECK = ("INSERT INTO provider_checks (time, provider, model, ok, ttft, total, error) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)")
_COLUMNS = ("id, time, source, conversation_id, requested_model, provider, model, prompt, messages, options, "
            "response, finish_reason, prompt_tokens, completion_tokens, latency, ttft, status, error, fallbacks")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against a crashed process, much faster
    return db


class RequestLog:
    """One request-log database file; opening it applies pending migrations.

    ``record()`` is safe from any thread or event loop and never blocks. Call :meth:`close` (or
    leave it to ``atexit``) to write what is still queued.
    """

    def __init__(self, path: str | Path, *, queue_size: int = QUEUE_SIZE, batch_size: int = BATCH_SIZE,
                 batch_interval: float = BATCH_INTERVAL) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created readable by its owner only: prompts are private. SQLite gives the -wal and -shm
        # files the database file's permissions.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with contextlib.closing(_connect(self.path)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            migrate(db)
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.dropped = 0  # records lost to a full queue or a failed write
        self.written = 0  # records written
        self.transactions = 0  # batches committed
        self.queue_size = queue_size
        self._backlog: deque[object] = deque()  # encoded rows, checks and flush/stop markers
        self._wake = threading.Event()  # set by flush() and close(): write now
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._reader: sqlite3.Connection | None = None

    # -- writing ------------------------------------------------------------------------------------

    def record(self, item: Exchange | ProviderCheck) -> None:
        """Queue ``item`` for writing. Never blocks: a full backlog drops it (one warning per log).
        After :meth:`close` (a request finishing during shutdown) the record is dropped."""
        if self._closed:
            self.dropped += 1
            return
        if self._thread is None:
            self._start()
        if len(self._backlog) >= self.queue_size:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("the request log %s cannot keep up: %d records are waiting; dropping new ones "
                            "until it catches up", self.path, self.queue_size)
            return
        self._backlog.append(_encode(_exchange_row(item)) if isinstance(item, Exchange) else item)

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Wait until everything recorded so far is written; False if that took over ``timeout``."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._backlog.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what is queued, stop the writer and close the database (idempotent)."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        atexit.unregister(self.close)
        if thread is not None:
            self._backlog.append(_STOP)
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the request log %s did not finish writing within %.0f s", self.path, timeout)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.dropped:
            log.warning("the request log %s dropped %d records", self.path, self.dropped)

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> None:
        with self._start_lock:
            if self._closed:
                raise RuntimeError(f"the request log {self.path} is closed")
            if self._thread is None:
                # A daemon thread, flushed by atexit: a non-daemon one would keep the interpreter
                # waiting at exit before atexit handlers could tell it to stop.
                thread = threading.Thread(target=self._run, name="patchbay-requestlog", daemon=True)
                thread.start()
                self._thread = thread
                atexit.register(self.close)

    def _run(self) -> None:
        """The writer thread: every ``batch_interval`` (or at once for a flush or close), one
        transaction for whatever gathered, written in chunks of :data:`ROWS_PER_STATEMENT`."""
        db = _connect(self.path)
        try:
            while True:
                self._wake.wait(self.batch_interval)
                self._wake.clear()
                rows: list[bytes] = []
                checks: list[ProviderCheck] = []
                waiting: list[threading.Event] = []
                stop = False
                while self._backlog and not stop:
                    item = self._backlog.popleft()
                    if isinstance(item, bytes):
                        rows.append(item)
                    elif isinstance(item, ProviderCheck):
                        checks.append(item)
                    elif isinstance(item, threading.Event):
                        waiting.append(item)
                    elif item is _STOP:
                        stop = True
                    if len(rows) >= self.batch_size:
                        self._write(db, rows, checks)
                        rows, checks = [], []
                if rows or checks:
                    self._write(db, rows, checks)
                for event in waiting:
                    event.set()
                if stop:
                    return
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, rows: list[bytes], checks: list[ProviderCheck]) -> None:
        values = [[bytes(value).decode() if index in _NESTED else value for index, value in enumerate(_decode_row(row))]
                  for row in _redacted(rows)]
        try:
            db.execute("BEGIN IMMEDIATE")
            for start in range(0, len(values), ROWS_PER_STATEMENT):
                chunk = values[start:start + ROWS_PER_STATEMENT]
                db.execute(_insert(len(chunk)), [value for row in chunk for value in row])
            if checks:
                db.executemany(_INSERT_CHECK, [_check_row(check) for check in checks])
            db.execute("COMMIT")
            self.written += len(rows) + len(checks)
            self.transactions += 1
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.dropped += len(rows) + len(checks)
            log.warning("the request log %s could not write %d records: %s", self.path, len(rows) + len(checks),
                        exc)

    # -- reading ------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = _connect(self.path)
            self._reader.row_factory = sqlite3.Row
        return self._reader

    def latest(self, count: int = 10, *, query: str | None = None,
               conversation_id: str | None = None) -> list[Exchange]:
        """The newest ``count`` exchanges (all when 0), newest first; ``query`` searches the text
        of the messages and the response (case-insensitive)."""
        where: list[str] = []
        args: list[Any] = []
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(messages LIKE ? ESCAPE '\\' OR response LIKE ? ESCAPE '\\')")
            args += [pattern, pattern]
        if conversation_id:
            where.append("conversation_id = ?")
            args.append(conversation_id)
        sql = f"SELECT {_COLUMNS} FROM exchanges"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if count > 0:
            sql += " LIMIT ?"
            args.append(count)
        return [_exchange(row) for row in self._db().execute(sql, args)]

    def get(self, exchange_id: int) -> Exchange | None:
        """The exchange with this id, or None."""
        row = self._db().execute(f"SELECT {_COLUMNS} FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
        return None if row is None else _exchange(row)

    def conversation(self, conversation_id: str) -> list[Exchange]:
        """Every exchange of a conversation, oldest first."""
        rows = self._db().execute(f"SELECT {_COLUMNS} FROM exchanges WHERE conversation_id = ? ORDER BY id",
                                  (conversation_id,))
        return [_exchange(row) for row in rows]

    def last_conversation_id(self) -> str | None:
        """The conversation of the newest exchange that belongs to one."""
        row = self._db().execute("SELECT conversation_id FROM exchanges WHERE conversation_id IS NOT NULL "
                                 "ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    def count(self) -> int:
        """How many exchanges are stored."""
        return int(self._db().execute("SELECT count(*) FROM exchanges").fetchone()[0])

    def latest_checks(self) -> dict[str, ProviderCheck]:
        """The last check of each provider, by provider name."""
        rows = self._db().execute(
            "SELECT time, provider, model, ok, ttft, total, error FROM provider_checks WHERE id IN "
            "(SELECT max(id) FROM provider_checks GROUP BY provider)")
        return {row["provider"]: ProviderCheck(row["time"], row["provider"], row["model"], bool(row["ok"]),
                                               row["ttft"], row["total"], row["error"]) for row in rows}


# -- rows -------------------------------------------------------------------------------------------


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def _prompt_of(messages: Any) -> str:
    """The text of the last user message (messages are dicts, or the server's structs)."""
    for message in reversed(messages if isinstance(messages, Sequence) and not isinstance(messages, str) else []):
        if _field(message, "role") == "user":
            content = _field(message, "content")
            if isinstance(content, list):
                return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
            return content if isinstance(content, str) else ""
    return ""


def _exchange_row(item: Exchange) -> tuple[Any, ...]:
    """The row, in :data:`_ROW_FIELDS` order (messages, options and fallbacks as they are)."""
    return (item.time, item.source, item.conversation_id, item.requested_model, item.provider, item.model,
            _prompt_of(item.messages), item.messages, item.options, item.response, item.finish_reason,
            item.prompt_tokens, item.completion_tokens, item.latency, item.ttft, item.status, item.error,
            list(item.fallbacks))


def _redacted(rows: list[bytes]) -> list[bytes]:
    """``rows`` (JSON) with every secret redacted: one scan of the whole batch when none is there
    (the usual case), row by row when one is."""
    texts = [row.decode() for row in rows]
    whole = "\n".join(texts)
    if redact_json(whole) == whole:
        return rows
    return [redact_json(text).encode() for text in texts]


def _check_row(item: ProviderCheck) -> tuple[Any, ...]:
    return (item.time, item.provider, item.model, int(item.ok), item.ttft, item.total,
            None if item.error is None else redact(item.error))


def _exchange(row: sqlite3.Row) -> Exchange:
    return Exchange(
        id=row["id"], time=row["time"], source=row["source"], conversation_id=row["conversation_id"],
        requested_model=row["requested_model"], provider=row["provider"], model=row["model"], prompt=row["prompt"],
        messages=msgspec.json.decode(row["messages"]), options=msgspec.json.decode(row["options"]),
        response=row["response"], finish_reason=row["finish_reason"], prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], latency=row["latency"], ttft=row["ttft"], status=row["status"],
        error=row["error"], fallbacks=msgspec.json.decode(row["fallbacks"]),
    )
