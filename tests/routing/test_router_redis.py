"""Two router processes sharing one real redis-server see each other's cooldowns."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from patchbay.redact import fingerprint
from tests.replicas.liaobots import LiaobotsReplica
from tests.replicas.openai_fake import OpenAIFake
from tests.support.paths import ROOT

pytestmark = [pytest.mark.process]



async def routed_request(*args: str) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.router_process", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def test_a_cooldown_set_in_one_process_is_honoured_in_another(redis_url: str) -> None:
    async with OpenAIFake() as bad, OpenAIFake() as good:
        bad.scenario = "status_503"
        first = await routed_request("cooldown", redis_url, bad.api_base, good.api_base)
        assert first["text"] == good.answer and first["fallbacks"] == ["Bad"]
        assert first["bad_cooldown"] is not None and first["degraded"] is False
        assert bad.chat_count == 1

        # A new process, with no local memory of the first:
        second = await routed_request("cooldown", redis_url, bad.api_base, good.api_base)
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


async def test_a_credential_banned_in_one_process_is_skipped_in_another(redis_url: str) -> None:
    async with LiaobotsReplica() as replica:
        replica.rejected_codes = {"code-a"}
        replica.valid_codes = {"code-b"}
        first = await routed_request("liaobots", redis_url, replica.base_url, "code-a,code-b")
        assert first["text"] == replica.answer
        assert first["banned"] == [fingerprint("code-a")]  # a fingerprint, never the code itself
        assert [r.headers["x-auth-code"] for r in replica.requests_to("/api/chat")] == ["code-a", "code-b"]

        second = await routed_request("liaobots", redis_url, replica.base_url, "code-a,code-b")
        assert second["text"] == replica.answer
        assert [r.headers["x-auth-code"] for r in replica.requests_to("/api/chat")][2:] == ["code-b"]
