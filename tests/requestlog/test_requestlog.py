"""The request log: migrations (blank and older databases), the batching background writer,
redaction, a full queue, the queries behind ``patchbay logs``, and the library switch."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import patchbay
from patchbay import requestlog
from patchbay.chat.request import ChatCompletionRequest
from patchbay.events import EventStream, Fallback, Finish, ProviderInfo, StreamEvent, TextDelta, Usage
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.redact import register_secret
from patchbay.requestlog import Exchange, ProviderCheck, RequestLog
from patchbay.requestlog.migrations import MIGRATIONS, migrate

SECRET = "sk-requestlog-test-5e1f0a"


def exchange(text: str = "hello", **fields: Any) -> Exchange:
    values: dict[str, Any] = {"time": time.time(), "source": "test",
                              "messages": [{"role": "user", "content": text}], "response": f"re: {text}"}
    return Exchange(**{**values, **fields})


@pytest.fixture
def log(tmp_path: Path) -> Iterator[RequestLog]:
    with RequestLog(tmp_path / "logs.db") as opened:
        yield opened


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Hold the database's write lock, so the writer thread waits (its busy timeout is long)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("COMMIT")
    finally:
        db.close()


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- migrations -----------------------------------------------------------------------------------------


def test_a_blank_database_gets_every_migration_and_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "logs.db"
    RequestLog(path).close()
    assert {"exchanges", "provider_checks", "_migrations"} <= tables(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert names == [m.__name__ for m in MIGRATIONS]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_older_database_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert migrate(db, upto=1) == ["m001_exchanges"]  # the first released schema
        db.execute("INSERT INTO exchanges (time, source, prompt, messages, options, response, fallbacks) "
                   "VALUES (1700000000, 'cli', 'old prompt', '[{\"role\": \"user\", \"content\": \"old prompt\"}]', "
                   "'{}', 'old answer', '[]')")
    assert "provider_checks" not in tables(path)

    with RequestLog(path) as log:
        assert "provider_checks" in tables(path)
        old = log.get(1)
        assert old is not None and old.response == "old answer" and old.messages[0]["content"] == "old prompt"
        log.record(ProviderCheck(time.time(), "fake", "m", ok=True, ttft=0.1, total=0.2))
        log.record(exchange("new"))
        assert log.flush()
        assert log.count() == 2 and set(log.latest_checks()) == {"fake"}


def test_migrations_run_once(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    RequestLog(path).close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert migrate(db) == []
        assert db.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)


def test_a_file_that_is_not_a_database_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        RequestLog(path)


# -- writing --------------------------------------------------------------------------------------------


def test_records_are_written_by_the_background_thread(log: RequestLog) -> None:
    for index in range(25):
        log.record(exchange(f"message {index}"))
    assert log.flush()
    assert log.count() == 25 and log.written == 25 and log.dropped == 0
    newest = log.latest(1)[0]
    assert newest.prompt == "message 24" and newest.response == "re: message 24" and newest.id == 25


def test_queued_records_are_written_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with RequestLog(path, batch_size=100) as log:
        with write_lock(path):
            for index in range(301):
                log.record(exchange(str(index)))
        assert log.flush()
        assert log.count() == 301
        # The first record's transaction waited for the lock; the 300 queued meanwhile took 3 more.
        assert log.transactions <= 4


def test_a_full_queue_drops_records_with_one_warning_and_never_blocks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="patchbay.requestlog")
    path = tmp_path / "logs.db"
    with RequestLog(path, queue_size=5) as log:
        with write_lock(path):
            started = time.perf_counter()
            for index in range(50):
                log.record(exchange(str(index)))
            elapsed = time.perf_counter() - started
        assert elapsed < 1.0  # the writer is stuck behind the lock; recording went on regardless
        assert log.flush()
        assert 0 < log.dropped <= 45
        assert log.count() == 50 - log.dropped
    warnings = [r for r in caplog.records if "cannot keep up" in r.getMessage()]
    assert len(warnings) == 1


def test_close_writes_what_is_queued_and_later_records_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    log = RequestLog(path)
    with write_lock(path):
        for index in range(10):
            log.record(exchange(str(index)))
    log.close()
    log.close()  # idempotent
    log.record(exchange("too late"))
    assert log.dropped == 1
    with RequestLog(path) as reopened:
        assert reopened.count() == 10


def test_two_logs_on_one_file_both_write_everything(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with RequestLog(path) as first, RequestLog(path) as second:
        for index in range(200):
            (first if index % 2 else second).record(exchange(str(index)))
        assert first.flush() and second.flush()
        assert first.count() == 200


def test_secrets_are_redacted_everywhere_they_could_hide(tmp_path: Path) -> None:
    register_secret(SECRET)
    path = tmp_path / "logs.db"
    with RequestLog(path) as log:
        log.record(exchange(f'my key is "{SECRET}"', response=f"you said {SECRET}", error=f"AuthError: {SECRET}",
                            options={"api_key": SECRET},
                            fallbacks=[Fallback("p", "m", "AuthError", f"bad key {SECRET}")]))
        log.record(ProviderCheck(time.time(), "p", "m", ok=False, error=f"rejected {SECRET}"))
        assert log.flush()
        stored = log.latest(1)[0]
        assert stored.prompt == 'my key is "[REDACTED]"'
        assert stored.response == "you said [REDACTED]" and stored.error == "AuthError: [REDACTED]"
        assert stored.options == {"api_key": "[REDACTED]"}
        assert stored.fallbacks[0]["message"] == "bad key [REDACTED]"
    raw = b"".join(file.read_bytes() for file in tmp_path.iterdir())
    assert SECRET.encode() not in raw


def test_a_secret_that_json_escapes_differently_is_still_redacted(tmp_path: Path) -> None:
    awkward = 'pw-"quoted"\\back-7c1d'  # a quote and a backslash: written escaped inside JSON
    register_secret(awkward)
    with RequestLog(tmp_path / "logs.db") as log:
        log.record(exchange(f"login with {awkward}", options={"password": awkward}))
        assert log.flush()
        stored = log.latest(1)[0]
    assert stored.prompt == "login with [REDACTED]" and stored.options == {"password": "[REDACTED]"}
    raw = b"".join(file.read_bytes() for file in tmp_path.iterdir())
    assert b"quoted" not in raw


# -- queries --------------------------------------------------------------------------------------------


def test_queries_behind_patchbay_logs(log: RequestLog) -> None:
    log.record(exchange("about cats", conversation_id="c1"))
    log.record(exchange("about 100% dogs", conversation_id="c2"))
    log.record(exchange("more cats", conversation_id="c1"))
    log.record(exchange("no conversation"))
    log.record(ProviderCheck(1.0, "fake", "m", ok=False, error="down"))
    log.record(ProviderCheck(2.0, "fake", "m", ok=True, total=0.5))
    assert log.flush()
    assert [e.prompt for e in log.latest(2)] == ["no conversation", "more cats"]
    assert len(log.latest(0)) == 4
    assert [e.prompt for e in log.latest(10, query="CATS")] == ["more cats", "about cats"]
    assert [e.prompt for e in log.latest(10, query="100%")] == ["about 100% dogs"]
    assert log.latest(10, query="1_0") == []  # LIKE wildcards are literal
    assert [e.prompt for e in log.latest(10, conversation_id="c1")] == ["more cats", "about cats"]
    assert log.last_conversation_id() == "c1"
    assert [e.prompt for e in log.conversation("c1")] == ["about cats", "more cats"]
    assert log.get(2) is not None and log.get(99) is None
    check = log.latest_checks()["fake"]
    assert check.ok and check.total == 0.5


async def test_exchange_from_stream_keeps_usage_fallbacks_and_the_error() -> None:
    async def events() -> AsyncIterator[StreamEvent]:
        yield ProviderInfo("a", "m1")
        yield Fallback("a", "m1", "RateLimited", "slow down")
        yield ProviderInfo("b", "m2")
        yield TextDelta("hi")
        yield Usage(3, 1)
        yield Finish("stop")

    stream = EventStream(events())
    await stream.collect()
    record = Exchange.from_stream(stream, time=1.0, source="test", messages=[{"role": "user", "content": "q"}],
                                  requested_model="route", latency=0.5, ttft=0.1)
    assert (record.provider, record.model, record.response, record.finish_reason) == ("b", "m2", "hi", "stop")
    assert (record.prompt_tokens, record.completion_tokens) == (3, 1)
    assert record.fallbacks[0].error == "RateLimited" and record.error is None
    assert record.to_dict()["fallbacks"][0]["message"] == "slow down"


# -- the library ----------------------------------------------------------------------------------------


class Scripted(AsyncGeneratorProvider):
    """Answers every request with two text deltas, usage and a finish."""

    name = "Scripted"

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        yield TextDelta("Hello ")
        yield TextDelta("there")
        yield Usage(5, 2)
        yield Finish("stop")


@pytest.fixture
def enabled(tmp_path: Path) -> Iterator[RequestLog]:
    log = requestlog.enable(tmp_path / "library.db")
    try:
        yield log
    finally:
        requestlog.disable()


async def test_the_library_records_when_enabled(enabled: RequestLog) -> None:
    client = patchbay.AsyncClient(Scripted)
    await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "whole"}], temperature=0.5)
    stream = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "streamed"}],
                                                  stream=True)
    assert isinstance(stream, patchbay.AsyncChunkStream)
    _ = [chunk async for chunk in stream]
    sync = patchbay.Client(Scripted)
    sync.chat.completions.create(model="x", messages=[{"role": "user", "content": "sync"}])
    assert enabled.flush()
    streamed, whole = enabled.latest(3)[1], enabled.latest(3)[2]
    assert [e.prompt for e in enabled.latest(3)] == ["sync", "streamed", "whole"]
    assert whole.source == "library" and whole.response == "Hello there" and whole.provider == "Scripted"
    assert whole.options == {"temperature": 0.5} and whole.completion_tokens == 2
    assert streamed.ttft is not None and streamed.latency is not None and streamed.error is None


async def test_a_stream_left_early_is_recorded_as_interrupted(enabled: RequestLog) -> None:
    client = patchbay.AsyncClient(Scripted)
    stream = await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}],
                                                  stream=True)
    assert isinstance(stream, patchbay.AsyncChunkStream)
    async for _ in stream:
        break
    await stream.close()
    assert enabled.flush()
    assert (enabled.latest(1)[0].error or "").startswith("Interrupted")


async def test_the_library_does_not_record_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_REQUEST_LOG", raising=False)
    assert requestlog.active() is None
    monkeypatch.setenv("PATCHBAY_REQUEST_LOG", "1")
    monkeypatch.setenv("PATCHBAY_REQUEST_LOG_PATH", str(tmp_path / "from-env.db"))
    try:
        client = patchbay.AsyncClient(Scripted)
        await client.chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}])
        log = requestlog.active()
        assert log is not None and log.path == tmp_path / "from-env.db"
        assert log.flush() and log.count() == 1
    finally:
        requestlog.disable()


def test_default_paths_follow_patchbay_home_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path / "home"))
    assert requestlog.default_path() == tmp_path / "home" / "logs.db"
    monkeypatch.delenv("PATCHBAY_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert requestlog.default_path() == tmp_path / "xdg" / "patchbay" / "logs.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert requestlog.default_path() == Path.home() / ".local" / "share" / "patchbay" / "logs.db"
    assert requestlog.log_path("~/x.db") == Path.home() / "x.db"


@pytest.mark.process
def test_processes_opening_a_new_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    code = ("import sys; from patchbay.requestlog import RequestLog, Exchange; "
            "log = RequestLog(sys.argv[1]); log.record(Exchange(time=0.0, source='p', messages=[])); log.close()")
    processes = [subprocess.Popen([sys.executable, "-c", code, str(path)], stderr=subprocess.PIPE)
                 for _ in range(6)]
    errors = [process.communicate(timeout=60)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 6, errors
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 6
