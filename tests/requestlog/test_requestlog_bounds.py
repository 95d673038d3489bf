"""The request log's bounds: per-row cap, the prompt stored once, a byte-bounded backlog,
retention (by age and by size, also ``patchbay logs prune``), a locked database, and the memory
of a log that received 120 prompts of 9 MB."""

from __future__ import annotations

import contextlib
import gc
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from patchbay.chat.request import decode_request
from patchbay.cli.logs import logs
from patchbay.redact import register_secret
from patchbay.requestlog import Exchange, RequestLog
from patchbay.requestlog.migrations import migrate
from patchbay.requestlog.store import BATCH_BYTES, CLIP_MARGIN, PROMPT_PREVIEW

MB = 1024 * 1024
MARKER = re.compile(r"…\[request log: (\d+) characters cut\]\Z")


def exchange(text: str = "hello", response: str = "ok", **fields: Any) -> Exchange:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    values: dict[str, Any] = {"time": time.time(), "source": "test", "response": response, "messages": messages}
    return Exchange(**{**values, **fields})


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock until the block ends."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_120_prompts_of_9_mb_stay_bounded_on_disk_and_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    cap = 8 * MB
    with RequestLog(path, max_bytes=cap) as log:
        log.record(exchange("warm up"))
        assert log.flush()
        gc.collect()
        baseline = rss_mb()
        for round_ in range(3):
            for index in range(40):
                prompt = "x" * (9 * MB - 5) + f"{round_:02d}-{index:02d}"  # a new 9 MB string each time
                log.record(exchange(prompt))
                del prompt
            assert log.flush(60)
        gc.collect()
        grown = rss_mb() - baseline
        assert log.written == 121 and log.dropped == 0 and log.truncated == 120
        # Retention runs after every tenth of the cap written: the cap, plus that, plus one batch.
        assert log.stored_bytes() <= cap + cap // 10 + BATCH_BYTES
        newest = log.latest(1)[0]
        found = MARKER.search(newest.prompt)
        assert found is not None
        kept = len(newest.prompt) - len(found.group(0))
        assert kept <= log.max_row_bytes and kept + int(found.group(1)) == 9 * MB
        assert len(newest.prompt.encode()) < log.max_row_bytes + 100
    files = sum(file.stat().st_size for file in tmp_path.iterdir())
    assert files <= cap + 40 * MB  # the database (bounded text, pages freed by the prune) and its WAL
    # In-process RSS is noisy (allocator, pytest); the bound is on growth: each prompt alone is 9 MB,
    # and before these bounds the backlog and the writer held hundreds of MB.
    assert grown < 64, f"RSS grew {grown:.0f} MB over a {baseline:.0f} MB baseline"


def test_the_prompt_is_stored_once(tmp_path: Path) -> None:
    text = "a long question " * 1000
    with RequestLog(tmp_path / "logs.db") as log:
        log.record(exchange(text))
        assert log.flush()
        stored = log.latest(1)[0]
        assert stored.prompt == text and stored.messages[1]["content"] == text
    with contextlib.closing(sqlite3.connect(tmp_path / "logs.db")) as db:
        prompt, messages = db.execute("SELECT prompt, messages FROM exchanges").fetchone()
    assert len(prompt) <= PROMPT_PREVIEW and text.startswith(prompt.removesuffix("…"))  # clip() marks its cut
    assert messages.count("a long question") == 1000


def test_the_row_cap_cuts_the_longest_texts_first(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "logs.db", max_row_bytes=10_000) as log:
        log.record(exchange("q" * 50_000, response="r" * 3_000))
        assert log.flush()
        stored = log.latest(1)[0]
    assert stored.messages[0]["content"] == "be brief" and stored.response == "r" * 3_000
    found = MARKER.search(stored.prompt)
    assert found is not None
    kept = stored.prompt[:found.start()]
    assert set(kept) == {"q"} and len(kept) + int(found.group(1)) == 50_000
    assert len(kept) + len("be brief") + 3_000 <= 10_000


def test_a_secret_across_the_cut_is_redacted_first(tmp_path: Path) -> None:
    secret = "sk-bounds-secret-0123456789abcdef"
    register_secret(secret)
    text = "a" * (1_000 - 10) + secret + "b" * 5_000
    with RequestLog(tmp_path / "logs.db", max_row_bytes=1_000) as log:
        log.record(exchange(text, response=""))
        assert log.flush()
        stored = log.latest(1)[0]
    assert secret[:6] not in stored.prompt and "bbbb" not in stored.prompt and MARKER.search(stored.prompt)
    assert (tmp_path / "logs.db").read_bytes().find(secret[:10].encode()) == -1


def test_a_full_backlog_refuses_the_new_record_and_counts_it(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "logs.db", backlog_bytes=2_000) as log:
        log.record(exchange("x" * 5_000))  # over the byte bound on its own
        log.record(exchange("small"))
        assert log.flush()
        assert (log.dropped, log.dropped_backlog, log.written) == (1, 1, 1)
        assert log.latest(1)[0].prompt == "small" and log.pending_bytes == 0


def test_a_locked_database_is_retried_then_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with RequestLog(path, lock_wait=0.5) as log:
        with write_lock(path):
            log.record(exchange("while locked"))
            assert log.flush(10)
        assert log.lock_retries > 0 and (log.dropped, log.dropped_locked, log.written) == (1, 1, 0)
        log.record(exchange("after"))
        assert log.flush()
        assert [e.prompt for e in log.latest(5)] == ["after"] and log.dropped == 1


def test_a_lock_released_within_the_bound_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with RequestLog(path, lock_wait=30) as log:
        with write_lock(path) as other:
            log.record(exchange("waits"))
            wait_until(lambda: log.lock_retries > 0)
            other.execute("COMMIT")
        assert log.flush(30)
        assert (log.written, log.dropped) == (1, 0) and log.latest(1)[0].prompt == "waits"


def test_prune_by_days(tmp_path: Path) -> None:
    now = time.time()
    with RequestLog(tmp_path / "logs.db", max_bytes=None) as log:
        for age in (40, 20, 1, 0):
            log.record(exchange(f"{age} days old", time=now - age * 86400))
        assert log.flush()
        assert log.prune(days=10) == 2
        assert [e.prompt for e in log.latest(0)] == ["0 days old", "1 days old"]


def test_prune_by_size_deletes_the_oldest_first(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "logs.db", max_bytes=None) as log:
        for index in range(10):
            log.record(exchange(f"{index} " + "z" * 10_000))
        assert log.flush()
        assert log.prune(max_bytes=35_000) == 7
        assert log.stored_bytes() <= 35_000
        assert [e.prompt.split()[0] for e in log.latest(0)] == ["9", "8", "7"]


def test_retention_runs_in_the_writer(tmp_path: Path) -> None:
    with RequestLog(tmp_path / "logs.db", max_bytes=200_000, max_row_bytes=50_000) as log:
        for index in range(30):
            log.record(exchange(f"{index} " + "w" * 60_000))
            assert log.flush()
        assert log.pruned > 0 and log.stored_bytes() <= 200_000 + 2 * 50_500


def test_an_older_database_gets_sizes_and_can_be_pruned(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        migrate(db, upto=2)
        for index in range(3):
            db.execute("INSERT INTO exchanges (time, source, prompt, messages, options, response, fallbacks) "
                       "VALUES (?, 'cli', ?, ?, '{}', 'answer', '[]')",
                       (1_700_000_000 + index, f"old {index}", f'[{{"role": "user", "content": "old {index}"}}]'))
    with RequestLog(path, max_bytes=None) as log:
        assert log.stored_bytes() > 0
        assert log.prune(days=1) == 3 and log.count() == 0


def test_patchbay_logs_prune(tmp_path: Path) -> None:
    path = tmp_path / "logs.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nrequest_log_path = "{path}"\nrequest_log_max_bytes = 0\n')
    now = time.time()
    with RequestLog(path) as log:
        for index in range(6):
            log.record(exchange(f"{index} " + "p" * 1_000, time=now - (5 - index) * 86400))
        assert log.flush()
    result = CliRunner().invoke(logs, ["prune", "--config", str(config)])
    assert result.exit_code != 0 and "--days" in result.output  # no retention configured, none given
    result = CliRunner().invoke(logs, ["prune", "--days", "3.5", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "Deleted 2 exchanges; 4 left" in result.output
    result = CliRunner().invoke(logs, ["prune", "--max-bytes", "2.6KiB", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "Deleted 2 exchanges; 2 left" in result.output
    result = CliRunner().invoke(logs, ["prune", "--max-bytes", "lots", "--config", str(config)])
    assert result.exit_code != 0 and "not a size" in result.output


def test_a_huge_prompt_is_cut_before_it_waits_in_the_backlog(tmp_path: Path) -> None:
    """The server's messages are structs: a 9 MB one costs the backlog about the row cap, not 9 MB."""
    request = decode_request(json.dumps({"model": "m", "messages": [
        {"role": "user", "content": "z" * (9 * MB)},
        {"role": "user", "content": [{"type": "text", "text": "p" * (9 * MB)}]}]}).encode())
    path = tmp_path / "logs.db"
    with RequestLog(path, lock_wait=30) as log:
        with write_lock(path) as other:
            log.record(Exchange(time=time.time(), source="server", messages=request.messages, response=""))
            pending = log.pending_bytes  # the writer cannot finish it while the lock is held
            other.execute("COMMIT")
        assert log.flush(30)
        stored = log.latest(1)[0]
    assert 0 < pending < 4 * (log.max_row_bytes + CLIP_MARGIN)
    assert request.messages[0].content == "z" * (9 * MB)  # the caller's request is untouched
    texts = [stored.messages[0]["content"], stored.messages[1]["content"][0]["text"]]
    assert all(MARKER.search(text) for text in texts)
    assert sum(len(text.encode()) for text in texts) < log.max_row_bytes + 200
