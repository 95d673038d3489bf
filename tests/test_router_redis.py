"""Two router processes sharing one real redis-server see each other's cooldowns."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.replicas.openai_fake import OpenAIFake

ROOT = Path(__file__).resolve().parent.parent


async def routed_request(redis_url: str, bad: OpenAIFake, good: OpenAIFake) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.router_process", redis_url, bad.api_base, good.api_base,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def test_a_cooldown_set_in_one_process_is_honoured_in_another(redis_url: str) -> None:
    async with OpenAIFake() as bad, OpenAIFake() as good:
        bad.scenario = "status_503"
        first = await routed_request(redis_url, bad, good)
        assert first["text"] == good.answer and first["fallbacks"] == ["Bad"]
        assert first["bad_cooldown"] is not None and first["degraded"] is False
        assert bad.chat_count == 1

        second = await routed_request(redis_url, bad, good)  # a new process: no local memory of A
        assert second["text"] == good.answer
        assert second["fallbacks"] == []
        assert bad.chat_count == 1  # skipped: cooling down, as process one recorded in Redis
        assert good.chat_count == 2


async def test_redis_down_degrades_to_local_state_not_failed_requests(unused_tcp_port: int,
                                                                       caplog: object) -> None:
    from patchbay.providers.openai_compatible import OpenAICompatible
    from patchbay.routing import RedisStateStore, Router, Target

    state = RedisStateStore(f"redis://127.0.0.1:{unused_tcp_port}/0", timeout=0.2)
    async with OpenAIFake() as fake:
        router = Router.configure({"fake": [Target(OpenAICompatible.configure("F", base_url=fake.api_base),
                                                   "fake-small")]}, state=state)
        for _ in range(3):
            assert await router.create_async("fake", [{"role": "user", "content": "hi"}]) == fake.answer
    assert state.degraded
    assert (await router.health())["F/fake-small"].successes == 3  # kept locally meanwhile
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "unavailable" in r.getMessage()]  # type: ignore[attr-defined]
    assert len(warnings) == 1
    await state.close()
