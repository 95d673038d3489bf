"""/v1/embeddings and /v1/completions count as chat completions do: against the client's rate
limits, in ``/metrics`` and in the request log (the gateway in this process, a real fake upstream)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchbay.requestlog import RequestLog
from patchbay.server.app import Gateway
from patchbay.settings import RateLimits, RouterSettings, ServerSettings, Settings
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient

EMBED = json.dumps({"model": "small", "input": ["one", "two"]}).encode()
COMPLETE = json.dumps({"model": "small", "prompt": "Once", "max_tokens": 20}).encode()


def settings_for(fake: OpenAIFake, tmp_path: Path, **limits: int) -> Settings:
    return Settings(server=ServerSettings(web_ui=False, request_log=True,
                                          request_log_path=str(tmp_path / "logs.db")),
                    router=RouterSettings(retries=1), limits=RateLimits(**limits),
                    providers={"fake": {"base_url": fake.api_base, "models": ["m"]}}, routes={"small": ["fake/m"]})


@pytest.mark.parametrize(("path", "body"), [("/v1/embeddings", EMBED), ("/v1/completions", COMPLETE)],
                         ids=["embeddings", "completions"])
async def test_rate_limits_metrics_and_the_request_log_see_the_endpoint(
        openai_fake: OpenAIFake, tmp_path: Path, path: str, body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_API_KEYS", raising=False)
    monkeypatch.delenv("PATCHBAY_REDIS_URL", raising=False)
    gateway = ASGIClient(Gateway(settings_for(openai_fake, tmp_path, requests_per_minute=2)))
    async with gateway:
        statuses = [(await gateway.request("POST", path, body)).status for _ in range(3)]
        metrics = (await gateway.request("GET", "/metrics")).body.decode()
    assert statuses == [200, 200, 429]  # the third is over the 2 per minute
    assert 'patchbay_requests_total{provider="fake",model="m",status="200"} 2' in metrics
    assert 'patchbay_rate_limited_total{key="anonymous",limit="requests_per_minute"} 1' in metrics
    log = RequestLog(tmp_path / "logs.db")
    try:
        rows = log.latest(10)
    finally:
        log.close()
    assert [(row.status, row.provider, row.requested_model) for row in rows] == [(200, "fake", "small")] * 2
