"""Stored responses in a real redis-server: shared by two gateways (so ``previous_response_id``
works whichever instance answers), expiring with their TTL, and answered from this process's
memory while Redis is down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from patchbay.requestlog.responses import RedisResponseStore
from patchbay.server.app import Gateway
from patchbay.settings import RouterSettings, ServerSettings, Settings
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient
from tests.support.redis_server import RedisProcess, free_port

pytestmark = [pytest.mark.redis]

CONVERSATION = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


async def test_put_then_get_and_the_key_expires_with_the_ttl(redis_server: RedisProcess, redis_url: str) -> None:
    redis_server.flush()
    store = RedisResponseStore(redis_url, namespace="t")
    try:
        await store.put("resp_1", {"id": "resp_1"}, CONVERSATION, ttl=60)
        stored = await store.get("resp_1")
        assert stored is not None and stored.response == {"id": "resp_1"} and stored.conversation == CONVERSATION
        assert await store.get("resp_2") is None
    finally:
        await store.close()
    with redis.Redis.from_url(redis_url) as client:
        ttl_ms = client.pttl("patchbay:t:response:resp_1")
    assert 0 < ttl_ms <= 60_000


async def test_while_redis_is_down_responses_are_kept_in_this_process(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisResponseStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        await store.put("resp_1", {"id": "resp_1"}, CONVERSATION, ttl=60)
        stored = await store.get("resp_1")
    finally:
        await store.close()
    assert stored is not None and stored.conversation == CONVERSATION
    assert any("keeping responses in this process" in record.getMessage() for record in caplog.records)


async def test_two_gateways_share_the_chain(redis_server: RedisProcess, redis_url: str, openai_fake: OpenAIFake,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server.flush()
    monkeypatch.setenv("PATCHBAY_REDIS_URL", redis_url)
    settings = Settings(server=ServerSettings(web_ui=False, request_log=False),
                        router=RouterSettings(retries=1, namespace="shared"),
                        providers={"fake": {"base_url": openai_fake.api_base, "models": ["m"]}},
                        routes={"small": ["fake/m"]})
    first, second = ASGIClient(Gateway(settings)), ASGIClient(Gateway(settings))
    async with first, second:
        answer = await first.request("POST", "/v1/responses",
                                     json.dumps({"model": "small", "input": "Remember 7"}).encode())
        assert answer.status == 200, answer.body
        response_id = answer.json()["id"]
        shown = await second.request("GET", f"/v1/responses/{response_id}")
        assert shown.status == 200 and shown.json()["id"] == response_id
        follow = await second.request("POST", "/v1/responses", json.dumps(
            {"model": "small", "input": "Which number?", "previous_response_id": response_id}).encode())
        assert follow.status == 200, follow.body
    sent = openai_fake.bodies[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["Remember 7", "Which number?"]
    assert sent[1]["role"] == "assistant" and sent[1]["content"] == openai_fake.answer
