"""The request log database: records, a background writer, and the queries ``patchbay logs`` uses.

Recording must not slow the request it records. :meth:`RequestLog.record` encodes the record as
one JSON row (a single call into msgspec, so nothing of the request is kept alive for later) and
appends it to a backlog bounded in records (``queue_size``) and in bytes (``backlog_bytes``, the
encoded rows waiting or being written). A daemon thread wakes every ``batch_interval`` seconds,
redacts what gathered and inserts it in one transaction. When the backlog is full the *new*
record is refused (counted in :attr:`RequestLog.dropped_backlog` and :attr:`RequestLog.dropped`,
one warning per episode), never waited for.

Bounds: every text of a row (message contents, tool arguments, the answer) is cut so the row's
texts total at most ``max_row_bytes`` (UTF-8), the longest first, each cut ending with a marker
that says how much was cut; secrets are redacted before the cut. A text far over the cap is cut
already in :meth:`RequestLog.record`, so a 9 MB prompt never waits in memory. The last user
message is stored once, in ``messages``: the ``prompt`` column holds a short preview.
Retention (``retention_days`` and/or ``max_bytes`` of stored text, oldest rows first) runs when
the writer starts and then every ``prune_interval`` seconds or after a tenth of ``max_bytes`` (at
least 64 KiB) written, so the stored text exceeds the cap by at most that and one batch; a bounded number
of rows per run; :meth:`RequestLog.prune` runs it by hand (``patchbay logs prune``). When
another connection holds the write lock the writer retries with backoff for up to ``lock_wait``
seconds, then drops the batch and counts it in :attr:`RequestLog.dropped_locked`.

The database is in WAL mode: readers
(``patchbay logs``) never block the writer, several server processes can share one file, and a
process killed mid-write leaves the last committed transaction intact, never half a row.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import logging
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from patchbay.errors import PatchbayError
from patchbay.events import EventStream
from patchbay.redact import clip, redact, redact_json
from patchbay.requestlog.migrations import migrate

__all__ = ["Exchange", "ProviderCheck", "RequestLog", "Spend", "describe_error", "prune_database"]

log = logging.getLogger("patchbay.requestlog")

QUEUE_SIZE = 10_000  # records waiting for the writer; beyond this they are dropped
BACKLOG_BYTES = 64 * 1024 * 1024  # encoded rows waiting for (or being written by) the writer, at most
MAX_ROW_BYTES = 256 * 1024  # the texts of one row (messages, answer), at most; longer ones are cut
MAX_BYTES = 1024 * 1024 * 1024  # stored text of all rows, at most (oldest pruned first); None: no cap
PRUNE_INTERVAL = 60.0  # seconds between retention runs of the writer
PRUNE_ROWS = 1_000  # rows one retention run deletes at most (the next run goes on)
LOCK_WAIT = 10.0  # seconds the writer retries a locked database before it drops the batch
BATCH_SIZE = 500  # records per transaction at most
BATCH_BYTES = 4 * 1024 * 1024  # encoded bytes per transaction at most (one bigger row goes alone)
TRIM_BYTES = 1024 * 1024  # after a batch this big, freed memory is given back to the system (glibc)
TRIM_DELAY = 1.0  # seconds after such a batch the idle writer gives it back once more
PROMPT_PREVIEW = 200  # characters of the last user message kept in the prompt column
CLIP_MARGIN = 64 * 1024  # characters kept past the cap when record() cuts early (redaction needs them)
BATCH_INTERVAL = 0.05  # seconds the writer lets records gather once it has caught up
BUSY_TIMEOUT = 10.0  # seconds a reading connection waits for another process's write lock
WRITER_BUSY_TIMEOUT = 0.2  # the writer's wait per attempt; it retries up to lock_wait
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
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
    request_id: str | None = None  # the server's x-request-id of the request
    cost: float | None = None  # US dollars charged: every attempt, failed ones included (0 for a cache hit)
    key: str | None = None  # the name of the API key the server charged (never the key)
    cache: str | None = None  # the server's response cache: "hit" or "miss" (None: not consulted)
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
                   fallbacks=list(events.fallbacks), options=dict(options or {}), cost=events.ledger.cost)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return msgspec.to_builtins(asdict(self))  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Spend:
    """The exchanges of one API key, provider and model: how many, their tokens and their cost
    (US dollars); ``key`` None for exchanges not made through the server."""

    key: str | None
    provider: str | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    cache_hits: int


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
               "status", "error", "fallbacks", "request_id", "cost", "key", "cache")
_NESTED = frozenset({7, 8, 17})  # messages, options, fallbacks: stored as JSON text
#: Rows per INSERT statement. Many rows per statement means one sqlite3_step, and so one release of
#: the GIL, per chunk: executemany() releases it once per row, and under load each re-acquisition
#: waits for the event loop's thread to yield (up to the 5 ms switch interval). 43 rows x 22
#: columns (and size) stays under SQLite's oldest variable limit (999).
ROWS_PER_STATEMENT = 43
_encode = msgspec.json.Encoder(enc_hook=repr).encode  # anything unexpected is stored as its repr
_decode_row = msgspec.json.Decoder(tuple[tuple(msgspec.Raw if i in _NESTED else Any  # type: ignore[misc]
                                               for i in range(len(_ROW_FIELDS)))]).decode


def _insert(rows: int) -> str:
    one = "(" + ", ".join("?" * (len(_ROW_FIELDS) + 1)) + ")"
    return f"INSERT INTO exchanges ({', '.join(_ROW_FIELDS)}, size) VALUES " + ", ".join([one] * rows)


_INSERT_CHECK = ("INSERT INTO provider_checks (time, provider, model, ok, ttft, total, error) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)")
_COLUMNS = ("id, time, source, conversation_id, requested_model, provider, model, prompt, messages, options, "
            "response, finish_reason, prompt_tokens, completion_tokens, latency, ttft, status, error, fallbacks, "
            "request_id, cost, key, cache")


def _connect(path: Path, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against a crashed process, much faster
    return db


def _load_malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None elsewhere (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own symbols (no find_library: it runs ldconfig)
    except (OSError, AttributeError):
        return None


_malloc_trim: Any = None
_malloc_trim_loaded = False


def _trim_memory() -> None:
    """Give freed heap memory back to the system. Without it glibc keeps the writer thread's arena
    (and big freed blocks, once its mmap threshold has grown) mapped: the server's RSS stays at its
    high-water mark after a burst of large requests."""
    global _malloc_trim, _malloc_trim_loaded
    if not _malloc_trim_loaded:
        _malloc_trim, _malloc_trim_loaded = _load_malloc_trim(), True
    if _malloc_trim is not None:
        _malloc_trim(0)


def _busy(exc: sqlite3.Error) -> bool:
    """True when ``exc`` says another connection holds the lock (by SQLite's code, not its words)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _BUSY_CODES


class RequestLog:
    """One request-log database file; opening it applies pending migrations.

    ``record()`` is safe from any thread or event loop and never blocks. Call :meth:`close` (or
    leave it to ``atexit``) to write what is still queued. Counters: ``written``, ``dropped`` (all
    records lost), of which ``dropped_backlog`` (refused: backlog full), ``dropped_locked`` (the
    database stayed locked past ``lock_wait``) and ``dropped_error`` (another write error);
    ``truncated`` (rows whose texts were cut), ``lock_retries``, ``pruned`` (rows deleted by retention).
    """

    def __init__(self, path: str | Path, *, queue_size: int = QUEUE_SIZE, batch_size: int = BATCH_SIZE,
                 batch_interval: float = BATCH_INTERVAL, backlog_bytes: int = BACKLOG_BYTES,
                 max_row_bytes: int = MAX_ROW_BYTES, max_bytes: int | None = MAX_BYTES,
                 retention_days: float | None = None, lock_wait: float = LOCK_WAIT,
                 prune_interval: float = PRUNE_INTERVAL, prune_rows: int = PRUNE_ROWS) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created readable by its owner only: prompts are private. SQLite gives the -wal and -shm
        # files the database file's permissions.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with contextlib.closing(_connect(self.path)) as db:
            # Only takes effect on a new, empty file: freed pages can then be given back after a prune.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            migrate(db)
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self.queue_size = queue_size
        self.backlog_bytes = backlog_bytes
        self.max_row_bytes = max_row_bytes
        self.max_bytes = max_bytes or None
        self.retention_days = retention_days or None
        self.lock_wait = lock_wait
        self.prune_interval = prune_interval
        self.prune_rows = prune_rows
        self.dropped = 0  # records lost, for any reason (the sum of the three below, plus after close)
        self.dropped_backlog = 0  # refused because the backlog was full (records or bytes)
        self.dropped_locked = 0  # dropped because the database stayed locked past lock_wait
        self.dropped_error = 0  # dropped because of another database error
        self.truncated = 0  # rows whose texts were cut to max_row_bytes
        self.lock_retries = 0  # write attempts that found the database locked
        self.pruned = 0  # rows deleted by retention
        self.written = 0  # records written
        self.transactions = 0  # batches committed
        self.pending_bytes = 0  # encoded bytes recorded and not yet written or dropped
        self._count_lock = threading.Lock()
        self._full = False  # in a backlog-full episode (one warning each)
        self._trim_at: float | None = None  # when the writer, idle, gives freed memory back once more
        self._backlog: deque[object] = deque()  # encoded rows, checks and flush/stop markers
        self._wake = threading.Event()  # set by flush() and close(): write now
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._reader: sqlite3.Connection | None = None

    # -- writing ------------------------------------------------------------------------------------

    def record(self, item: Exchange | ProviderCheck) -> None:
        """Queue ``item`` for writing. Never blocks: a full backlog refuses it (counted, one warning
        per episode). After :meth:`close` (a request finishing during shutdown) the record is dropped."""
        if self._closed:
            with self._count_lock:
                self.dropped += 1
            return
        if self._thread is None:
            self._start()
        if isinstance(item, Exchange):
            entry: object = _encode(_exchange_row(item, self.max_row_bytes + CLIP_MARGIN))
            size = len(entry)  # type: ignore[arg-type]
        else:
            entry, size = item, 256
        with self._count_lock:
            if len(self._backlog) >= self.queue_size or self.pending_bytes + size > self.backlog_bytes:
                self.dropped += 1
                self.dropped_backlog += 1
                warn = not self._full
                self._full = True
            else:
                self.pending_bytes += size
                self._backlog.append(entry)
                self._full = False
                return
        if warn:
            log.warning("the request log %s cannot keep up: %d records (%d bytes) are waiting; refusing new ones "
                        "until it catches up", self.path, len(self._backlog), self.pending_bytes)

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
            log.warning("the request log %s dropped %d records (%d backlog full, %d database locked, %d errors)",
                        self.path, self.dropped, self.dropped_backlog, self.dropped_locked, self.dropped_error)

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
        transaction for whatever gathered (at most ``batch_size`` rows or :data:`BATCH_BYTES`),
        written in chunks of :data:`ROWS_PER_STATEMENT`; retention now and then."""
        db = _connect(self.path, WRITER_BUSY_TIMEOUT)
        db.execute("PRAGMA journal_size_limit=33554432")  # the WAL file shrinks back to 32 MiB after a checkpoint
        last_prune = -float("inf")
        since_prune = 0
        prune_bytes = max(64 * 1024, (self.max_bytes or 0) // 10)  # the overshoot allowed between runs

        def maybe_prune() -> None:
            nonlocal last_prune, since_prune
            if (self.max_bytes or self.retention_days) and (
                    time.monotonic() - last_prune >= self.prune_interval or since_prune >= prune_bytes):
                more = self._prune_bounded(db)
                last_prune = -float("inf") if more else time.monotonic()
                since_prune = 0

        try:
            while True:
                maybe_prune()
                self._wake.wait(self.batch_interval)
                self._wake.clear()
                if self._trim_at is not None and not self._backlog and time.monotonic() >= self._trim_at:
                    # Once more when a burst of large records is over: the request handlers free their
                    # copies after the log has written the rows.
                    self._trim_at = None
                    _trim_memory()
                rows: list[bytes] = []
                batch_bytes = 0
                checks: list[ProviderCheck] = []
                waiting: list[threading.Event] = []
                stop = False
                while self._backlog and not stop:
                    item = self._backlog.popleft()
                    if isinstance(item, bytes):
                        rows.append(item)
                        batch_bytes += len(item)
                    elif isinstance(item, ProviderCheck):
                        checks.append(item)
                    elif isinstance(item, threading.Event):
                        waiting.append(item)
                    elif item is _STOP:
                        stop = True
                    if len(rows) >= self.batch_size or batch_bytes >= BATCH_BYTES:
                        since_prune += self._write(db, rows, checks)
                        rows, checks, batch_bytes = [], [], 0
                        maybe_prune()
                if rows or checks:
                    since_prune += self._write(db, rows, checks)
                    maybe_prune()
                for event in waiting:
                    event.set()
                if stop:
                    return
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, rows: list[bytes], checks: list[ProviderCheck]) -> int:
        """Write one batch (retrying a locked database up to ``lock_wait``); the bytes stored."""
        encoded = sum(len(row) for row in rows) + 256 * len(checks)
        try:
            return self._write_batch(db, rows, checks)
        finally:
            with self._count_lock:
                self.pending_bytes -= encoded
            if encoded >= TRIM_BYTES:
                _trim_memory()
                self._trim_at = time.monotonic() + TRIM_DELAY

    def _write_batch(self, db: sqlite3.Connection, rows: list[bytes], checks: list[ProviderCheck]) -> int:
        values: list[list[Any]] = []
        for row in rows:
            text = redact_json(row.decode())  # redacted before anything is cut
            fields = list(_decode_row(text.encode()))
            del text
            self.truncated += _clip_row(fields, self.max_row_bytes)
            fields = [bytes(value).decode() if index in _NESTED and isinstance(value, msgspec.Raw) else value
                      for index, value in enumerate(fields)]
            fields.append(_row_size(fields))
            values.append(fields)
        del rows[:]  # the encoded rows are no longer needed while the write waits for a lock
        stored = sum(row[-1] for row in values)
        count = len(values) + len(checks)
        deadline = time.monotonic() + self.lock_wait
        backoff = 0.05
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                for start in range(0, len(values), ROWS_PER_STATEMENT):
                    chunk = values[start:start + ROWS_PER_STATEMENT]
                    db.execute(_insert(len(chunk)), [value for row in chunk for value in row])
                if checks:
                    db.executemany(_INSERT_CHECK, [_check_row(check) for check in checks])
                db.execute("COMMIT")
                self.written += count
                self.transactions += 1
                return stored
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if _busy(exc) and time.monotonic() < deadline:
                    self.lock_retries += 1
                    time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                    backoff = min(backoff * 2, 1.0)
                    continue
                with self._count_lock:
                    self.dropped += count
                    if _busy(exc):
                        self.dropped_locked += count
                    else:
                        self.dropped_error += count
                log.warning("the request log %s could not write %d records: %s", self.path, count, exc)
                return 0

    # -- retention ----------------------------------------------------------------------------------

    def _prune_bounded(self, db: sqlite3.Connection) -> bool:
        """One retention run of the writer; True when it stopped at ``prune_rows`` (more to do)."""
        try:
            deleted = prune_database(db, days=self.retention_days, max_bytes=self.max_bytes, limit=self.prune_rows)
        except sqlite3.Error as exc:  # a locked database: the next run tries again
            log.warning("the request log %s could not be pruned: %s", self.path, exc)
            return False
        self.pruned += deleted
        return deleted >= self.prune_rows

    def prune(self, *, days: float | None = None, max_bytes: int | None = None, limit: int | None = None) -> int:
        """Delete exchanges older than ``days`` and, oldest first, those beyond ``max_bytes`` of stored
        text (both default to this log's settings); at most ``limit`` rows (None: all). The rows deleted."""
        with contextlib.closing(_connect(self.path)) as db:
            deleted = prune_database(db, days=self.retention_days if days is None else days,
                                     max_bytes=self.max_bytes if max_bytes is None else max_bytes, limit=limit)
        self.pruned += deleted
        return deleted

    def stored_bytes(self) -> int:
        """The stored text of every exchange, in bytes (what ``max_bytes`` bounds)."""
        return int(self._db().execute("SELECT coalesce(sum(size), 0) FROM exchanges").fetchone()[0])

    # -- reading ------------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = _connect(self.path)
            self._reader.row_factory = sqlite3.Row
        return self._reader

    def latest(self, count: int = 10, *, query: str | None = None,
               conversation_id: str | None = None, since: float | None = None) -> list[Exchange]:
        """The newest ``count`` exchanges (all when 0), newest first; ``query`` searches the text
        of the messages and the response (case-insensitive); ``since``: started at or after that
        Unix time."""
        where: list[str] = []
        args: list[Any] = []
        if since is not None:
            where.append("time >= ?")
            args.append(since)
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

    def spend(self, since: float | None = None) -> list[Spend]:
        """What the exchanges since ``since`` (Unix time; None: all) cost, summed by API key,
        provider and model, the most expensive first."""
        sql = ("SELECT key, provider, model, count(*), sum(coalesce(prompt_tokens, 0)), "
               "sum(coalesce(completion_tokens, 0)), sum(coalesce(cost, 0)), sum(cache = 'hit') FROM exchanges")
        args: list[Any] = []
        if since is not None:
            sql += " WHERE time >= ?"
            args.append(since)
        sql += " GROUP BY key, provider, model ORDER BY 7 DESC, 4 DESC"
        return [Spend(key, provider, model, requests, prompt, completion, cost, hits or 0)
                for key, provider, model, requests, prompt, completion, cost, hits in self._db().execute(sql, args)]

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


def _exchange_row(item: Exchange, keep: int) -> tuple[Any, ...]:
    """The row, in :data:`_ROW_FIELDS` order (messages, options and fallbacks as they are), every
    text over ``keep`` characters already cut there (the exact cut comes after redaction)."""
    messages = _preclip_messages(item.messages, keep)
    prompt = _prompt_of(messages)
    return (item.time, item.source, item.conversation_id, item.requested_model, item.provider, item.model,
            clip(prompt, PROMPT_PREVIEW), messages, item.options, _preclip(item.response, keep), item.finish_reason,
            item.prompt_tokens, item.completion_tokens, item.latency, item.ttft, item.status, item.error,
            list(item.fallbacks), item.request_id, item.cost, item.key, item.cache)


_MARKER = re.compile(r"…\[request log: (\d+) characters cut\]\Z")


def _marker(cut: int) -> str:
    return f"…[request log: {cut} characters cut]"


def _preclip(text: Any, keep: int) -> Any:
    if not isinstance(text, str) or len(text) <= keep:
        return text
    return text[:keep] + _marker(len(text) - keep)


def _replace(item: Any, name: str, value: Any) -> Any:
    if isinstance(item, Mapping):
        return {**item, name: value}
    if isinstance(item, msgspec.Struct):
        return msgspec.structs.replace(item, **{name: value})
    return item


def _preclip_messages(messages: Any, keep: int) -> Any:
    """``messages`` with every content text over ``keep`` characters cut (copies of the messages
    changed; the caller's are untouched). Cheap: a walk over the messages, no encoding."""
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return messages
    out: list[Any] | None = None
    for index, message in enumerate(messages):
        content = _field(message, "content")
        new = content
        if isinstance(content, str):
            new = _preclip(content, keep)
        elif isinstance(content, list):
            parts = [_replace(part, "text", _preclip(text, keep))
                     if isinstance(text := _field(part, "text"), str) and len(text) > keep else part
                     for part in content]
            new = parts if any(a is not b for a, b in zip(parts, content, strict=True)) else content
        if new is not content:
            if out is None:
                out = list(messages)
            out[index] = _replace(message, "content", new)
    return messages if out is None else out


def _clip_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes plus a marker counting every character cut (also those
    an earlier cut took)."""
    earlier = 0
    found = _MARKER.search(text)
    if found:
        earlier = int(found.group(1))
        text = text[:found.start()]
    data = text.encode()
    if len(data) <= limit and not earlier:
        return text
    kept = data[:limit].decode(errors="ignore")
    return kept + _marker(len(text) - len(kept) + earlier)


def _strings(value: Any, found: list[int]) -> None:
    if isinstance(value, str):
        found.append(len(value.encode()))
    elif isinstance(value, list):
        for item in value:
            _strings(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, found)


def _clipped(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return _clip_text(value, limit) if len(value) > limit // 4 and (
            len(value.encode()) > limit or _MARKER.search(value)) else value
    if isinstance(value, list):
        return [_clipped(item, limit) for item in value]
    if isinstance(value, dict):
        return {key: _clipped(item, limit) for key, item in value.items()}
    return value


def _fair_limit(sizes: list[int], budget: int) -> int:
    """The largest L with sum(min(size, L)) <= budget: the longest texts are cut first, evenly."""
    remaining = budget
    ordered = sorted(sizes)
    for position, size in enumerate(ordered):
        share = remaining // (len(ordered) - position)
        if size > share:
            return max(share, 0)
        remaining -= size
    return max(ordered, default=0)


def _clip_row(fields: list[Any], max_row_bytes: int) -> int:
    """Cut the texts of a decoded row (messages at 7, response at 9) to ``max_row_bytes`` in all,
    in place; 1 when something was cut, else 0."""
    raw = fields[7]
    response = fields[9] if isinstance(fields[9], str) else ""
    if len(raw) + len(response.encode()) <= max_row_bytes and "characters cut]" not in response \
            and b"characters cut]" not in bytes(raw):
        return 0
    messages = msgspec.json.decode(bytes(raw))
    sizes: list[int] = []
    _strings(messages, sizes)
    sizes.append(len(response.encode()))
    limit = _fair_limit(sizes, max_row_bytes)
    clipped = _clipped(messages, limit)
    new_response = _clipped(response, limit)
    if clipped == messages and new_response == response:
        return 0
    fields[7] = _encode(clipped).decode()
    fields[9] = new_response
    return 1


def _row_size(fields: list[Any]) -> int:
    """The bytes of a row's texts (what retention by size counts)."""
    return sum(len(value.encode()) for value in fields if isinstance(value, str))


def prune_database(db: sqlite3.Connection, *, days: float | None = None, max_bytes: int | None = None,
                   limit: int | None = None) -> int:
    """Delete the exchanges (and provider checks) older than ``days``, then, oldest first, the
    exchanges beyond ``max_bytes`` of stored text; at most ``limit`` exchanges. The rows deleted."""
    deleted = 0
    cap = -1 if limit is None else limit
    if days:
        cutoff = time.time() - days * 86400
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted += db.execute("DELETE FROM exchanges WHERE id IN (SELECT id FROM exchanges WHERE time < ? "
                                  "ORDER BY id LIMIT ?)", (cutoff, cap)).rowcount
            db.execute("DELETE FROM provider_checks WHERE time < ?", (cutoff,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    if max_bytes and (limit is None or deleted < limit):
        db.execute("BEGIN IMMEDIATE")
        try:
            total = int(db.execute("SELECT coalesce(sum(size), 0) FROM exchanges").fetchone()[0])
            excess = total - max_bytes
            last = None
            if excess > 0:
                room = -1 if limit is None else limit - deleted
                covered = 0
                for row_id, size in db.execute("SELECT id, size FROM exchanges INDEXED BY exchanges_size "
                                               "ORDER BY id LIMIT ?", (room,)):
                    covered += size or 0
                    last = row_id
                    if covered >= excess:
                        break
            if last is not None:
                deleted += db.execute("DELETE FROM exchanges WHERE id <= ?", (last,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    if deleted:
        db.execute("PRAGMA incremental_vacuum")  # gives the freed pages back (files created by this version)
    return deleted


def _check_row(item: ProviderCheck) -> tuple[Any, ...]:
    return (item.time, item.provider, item.model, int(item.ok), item.ttft, item.total,
            None if item.error is None else redact(item.error))


def _exchange(row: sqlite3.Row) -> Exchange:
    messages = msgspec.json.decode(row["messages"])  # the prompt column is a preview; the full text is here
    return Exchange(
        id=row["id"], time=row["time"], source=row["source"], conversation_id=row["conversation_id"],
        requested_model=row["requested_model"], provider=row["provider"], model=row["model"],
        prompt=_prompt_of(messages) or row["prompt"], messages=messages, options=msgspec.json.decode(row["options"]),
        response=row["response"], finish_reason=row["finish_reason"], prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"], latency=row["latency"], ttft=row["ttft"], status=row["status"],
        error=row["error"], fallbacks=msgspec.json.decode(row["fallbacks"]), request_id=row["request_id"],
        cost=row["cost"], key=row["key"], cache=row["cache"],
    )
