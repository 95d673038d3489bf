"""docs/deploy.md works as written: its configuration, its commands (Redis and two instances) and
its requests are run exactly, with free ports in place of the documented ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from tests.replicas.openai_fake import OpenAIFake
from tests.support.paths import ROOT
from tests.support.redis_server import free_port, redis_server_binary

pytestmark = [pytest.mark.process]

DOC = ROOT / "docs" / "deploy.md"
PORTS = ("6379", "8080", "8101", "8102")  # redis, the upstream, the two instances
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.M | re.S)


def block(language: str, containing: str) -> str:
    (found,) = [text for text in blocks(language) if containing in text]
    return found


def test_the_doc_is_linked_from_the_readme() -> None:
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    assert "(docs/deploy.md)" in readme


def test_the_doc_has_the_blocks_this_test_runs() -> None:
    assert len(blocks("toml")) == 1
    run = block("sh", "redis-server").splitlines()
    assert all(line.startswith("export ") or line.endswith("&") for line in run)
    assert [line for line in block("sh", "ask()").splitlines() if line.startswith("ask ")]


async def start(line: str, env: dict[str, str], cwd: Path, log: Path) -> asyncio.subprocess.Process:
    """One ``command &`` line of the doc, with its ``NAME=value`` prefixes, as a process."""
    words = shlex.split(line.removesuffix("&"))
    own = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        own[name] = value
    if words[0] == "patchbay":
        words = [sys.executable, "-m", "patchbay", *words[1:]]
    elif words[0] == "redis-server":
        words[0] = redis_server_binary()
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(*words, env={**env, **own}, cwd=cwd,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=output,
                                                    stderr=asyncio.subprocess.STDOUT)


async def wait_ready(url: str) -> None:
    """Poll ``/ready`` until 200 (bounded by the caller's timeout)."""
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)  # the next poll


async def wait_redis(url: str) -> None:
    client = redis.asyncio.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        while True:
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if await client.ping():
                    return
            await asyncio.sleep(0.05)  # the next poll
    finally:
        await client.aclose()


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIFake]:
    async with OpenAIFake() as fake:
        fake.models = ["llama-3"]
        yield fake


async def test_two_instances_share_one_redis_as_documented(tmp_path: Path, upstream: OpenAIFake) -> None:
    assert upstream.base_url is not None
    ports = {"6379": str(free_port()), "8080": upstream.base_url.rsplit(":", 1)[1],
             "8101": str(free_port()), "8102": str(free_port())}

    def local(text: str) -> str:
        return re.sub(rf"\b({'|'.join(PORTS)})\b", lambda match: ports[match.group(1)], text)

    (tmp_path / "patchbay.toml").write_text(local(blocks("toml")[0]), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATCHBAY_")}
    env["PATCHBAY_HOME"] = str(tmp_path / "home")
    processes: list[asyncio.subprocess.Process] = []
    logs: list[Path] = []
    try:
        for line in local(block("sh", "redis-server")).splitlines():
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                env[name] = shlex.split(value)[0]
                continue
            logs.append(tmp_path / f"process-{len(logs)}.log")
            processes.append(await start(line, env, tmp_path, logs[-1]))
        async with asyncio.timeout(START_TIMEOUT):
            await wait_redis(env["PATCHBAY_REDIS_URL"])
            for port in (ports["8101"], ports["8102"]):
                await wait_ready(f"http://127.0.0.1:{port}/ready")

        script = local(block("sh", "ask()"))
        shell = await asyncio.create_subprocess_exec("bash", "-c", script, env=env, cwd=tmp_path,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(shell.communicate(), 60)
        assert shell.returncode == 0, err.decode()
        expected = re.findall(r"^ask .*#\s*(\d{3})", script, re.M)
        assert out.decode().split() == expected == ["200", "200", "429", "429", "200"]

        refused = 0.0
        async with aiohttp.ClientSession() as http:
            for port in (ports["8101"], ports["8102"]):
                async with http.get(f"http://127.0.0.1:{port}/metrics",
                                    headers={"Authorization": "Bearer sk-alice-change-me"}) as response:
                    text = await response.text()
                refused += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith('patchbay_rate_limited_total{key="trial"'))
        assert refused == 2  # one on each instance: each saw a single earlier request of trial
        assert upstream.chat_count == 3
        assert all((tmp_path / f"logs-{ports[port]}.db").exists() for port in ("8101", "8102"))  # one each
    finally:
        for process in reversed(processes):
            await stop(process)
    for log in logs:
        text = log.read_text(encoding="utf-8", errors="replace")
        assert "sk-trial-change-me" not in text and "sk-alice-change-me" not in text
