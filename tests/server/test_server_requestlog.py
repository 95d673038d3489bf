"""The server's request log: one row per request under concurrency, failures recorded with their
status, off with the switch, and intact after the server is killed with SIGKILL under load."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]

LOAD_TIMEOUT = 120.0
CONCURRENCY = 100
REQUIRED = ("time", "source", "prompt", "messages", "options", "response", "fallbacks", "status", "latency",
            "provider", "model")


def config_for(fake: OpenAIFake) -> dict[str, Any]:
    return {
        "router": {"retries": 1, "timeout": 30.0},
        "providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small"]}},
        "routes": {"small": ["fake/fake-small"]},
    }


def log_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "logs.db"


def body(index: int) -> dict[str, Any]:
    return {"model": "small", "messages": [{"role": "user", "content": f"echo:request {index}"}],
            "stream": index % 2 == 0}


async def post(http: aiohttp.ClientSession, url: str, index: int) -> int:
    async with http.post(url, json=body(index)) as response:
        await response.read()
        return response.status


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        yield http


def rows(path: Path, sql: str = "SELECT * FROM exchanges") -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql).fetchall()


async def test_a_thousand_concurrent_requests_make_a_thousand_rows(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with GatewayProcess(config_for(openai_fake), tmp_path) as gateway, client() as http:
        url = f"{gateway.api_base}/chat/completions"
        statuses = await asyncio.wait_for(asyncio.gather(*(post(http, url, i) for i in range(1000))), LOAD_TIMEOUT)
        assert statuses == [200] * 1000
        assert await gateway.stop() == -signal.SIGTERM  # uvicorn re-raises the signal it handled
        assert "Application shutdown complete" in gateway.log_text  # the lifespan flushed the log
    logged = rows(log_path(tmp_path))
    assert len(logged) == 1000
    assert sorted(row["response"] for row in logged) == sorted(f"request {i}" for i in range(1000))
    assert {(row["source"], row["status"], row["provider"], row["model"], row["requested_model"])
            for row in logged} == {("server", 200, "fake", "fake-small", "small")}
    assert all(row["latency"] > 0 and row["finish_reason"] == "stop" for row in logged)
    assert all(json.loads(row["messages"])[0]["content"] == "echo:" + row["response"] for row in logged)
    streamed = [row for row in logged if int(row["response"].split()[1]) % 2 == 0]
    assert all(row["ttft"] is not None and row["ttft"] <= row["latency"] for row in streamed)


async def test_failures_are_logged_with_their_status_and_error(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.fail_next, openai_fake.fail_status = 1, 400
    async with GatewayProcess(config_for(openai_fake), tmp_path) as gateway, client() as http:
        assert await post(http, f"{gateway.api_base}/chat/completions", 1) == 400
        assert await post(http, f"{gateway.api_base}/chat/completions", 2) == 200
    failed, ok = rows(log_path(tmp_path), "SELECT * FROM exchanges ORDER BY id")
    assert failed["status"] == 400 and failed["error"].startswith("InvalidRequest") and failed["response"] == ""
    assert failed["provider"] == "fake"
    assert ok["status"] == 200 and ok["error"] is None


async def test_the_switch_turns_the_server_log_off(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with GatewayProcess(config_for(openai_fake), tmp_path, env={"PATCHBAY_REQUEST_LOG": "false"}) as gateway, \
            client() as http:
        assert await post(http, f"{gateway.api_base}/chat/completions", 1) == 200
    assert not log_path(tmp_path).exists()
    async with GatewayProcess(config_for(openai_fake), tmp_path, args=["--no-log"]) as gateway, client() as http:
        assert await post(http, f"{gateway.api_base}/chat/completions", 1) == 200
    assert not log_path(tmp_path).exists()


async def test_sigkill_under_load_leaves_a_sound_database(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    path = log_path(tmp_path)
    async with GatewayProcess(config_for(openai_fake), tmp_path) as gateway, client() as http:
        url = f"{gateway.api_base}/chat/completions"
        counter = iter(range(1_000_000))

        async def load() -> None:
            with contextlib.suppress(aiohttp.ClientError):
                while True:
                    await post(http, url, next(counter))

        workers = [asyncio.ensure_future(load()) for _ in range(50)]
        try:
            deadline = time.monotonic() + LOAD_TIMEOUT
            while not path.exists() or len(rows(path, "SELECT id FROM exchanges")) < 300:  # rows are landing
                assert time.monotonic() < deadline, "the log never filled up"
                assert not any(worker.done() for worker in workers), "the load stopped early"
                await asyncio.sleep(0.05)
            assert gateway.process is not None
            os.killpg(gateway.process.pid, signal.SIGKILL)  # mid-load, mid-batch
            assert await gateway.stop() == -signal.SIGKILL
            await asyncio.wait_for(asyncio.gather(*workers), 30)  # every client sees its connection die
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    logged = rows(path)
    assert len(logged) >= 300
    for row in logged:
        assert all(row[column] is not None for column in REQUIRED), dict(row)
        assert row["response"] == json.loads(row["messages"])[0]["content"].removeprefix("echo:")
        assert row["status"] == 200


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_rss_returns_near_its_baseline_after_120_requests_of_9_mb(openai_fake: OpenAIFake,
                                                                        tmp_path: Path) -> None:
    prompt = "y" * (9 * 1024 * 1024)
    big = json.dumps({"model": "small", "messages": [{"role": "user", "content": prompt}]}).encode()
    async with GatewayProcess(config_for(openai_fake), tmp_path) as gateway, client() as http:
        assert gateway.process is not None
        url = f"{gateway.api_base}/chat/completions"

        async def send(payload: bytes) -> int:
            async with http.post(url, data=io.BytesIO(payload), headers={"content-type": "application/json"}) \
                    as response:
                await response.read()
                return response.status

        assert await send(json.dumps(body(1)).encode()) == 200
        baseline = rss_mb(gateway.process.pid)
        sizes = []
        semaphore = asyncio.Semaphore(8)

        async def limited() -> int:
            async with semaphore:
                return await send(big)

        for _ in range(3):
            statuses = await asyncio.wait_for(asyncio.gather(*(limited() for _ in range(40))), LOAD_TIMEOUT)
            # The fake upstream refuses bodies over aiohttp's 1 MiB (the gateway answers 502), and keeps
            # no 9 MB copies: the gateway still parsed each request and logs each exchange in full.
            assert len(set(statuses)) == 1 and statuses[0] in (200, 502)
            sizes.append(rss_mb(gateway.process.pid))
        deadline = time.monotonic() + 30
        while len(rows(log_path(tmp_path), "SELECT id FROM exchanges")) < 121:  # the writer catches up
            assert time.monotonic() < deadline, "the request log did not catch up"
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 15  # RSS returns once the writer, idle, hands freed memory back
        while (idle := rss_mb(gateway.process.pid)) > 1.5 * baseline and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stored = rows(log_path(tmp_path), "SELECT max(length(messages)) AS longest, sum(size) AS total "
                                          "FROM exchanges")[0]
    assert stored["longest"] < 300 * 1024 and stored["total"] < 121 * 300 * 1024
    assert idle <= 1.5 * baseline, f"RSS {baseline:.0f} MB idle, {sizes} after each round, {idle:.0f} MB after"
