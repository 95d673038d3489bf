"""Request ids: every response carries ``x-request-id`` (the client's own when it sent a plain
one, else a new one); the id is in error bodies (OpenAI's error object, Anthropic's envelope), in
the request log's row and in log lines about the request."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from patchbay.requestlog import RequestLog
from patchbay.server.app import Gateway
from patchbay.server.asgi import REQUEST_ID
from patchbay.server.run import LOG_FORMAT, RequestIdFilter
from patchbay.settings import RouterSettings, ServerSettings, Settings
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient

CHAT = json.dumps({"model": "small", "messages": [{"role": "user", "content": "Hi"}]}).encode()
GENERATED = re.compile(r"req_[0-9a-f]{24}")


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("PATCHBAY_API_KEYS", "PATCHBAY_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)


def gateway_for(fake: OpenAIFake, tmp_path: Path) -> ASGIClient:
    settings = Settings(server=ServerSettings(web_ui=False, request_log_path=str(tmp_path / "logs.db")),
                        router=RouterSettings(retries=1),
                        providers={"fake": {"base_url": fake.api_base, "models": ["m"]}}, routes={"small": ["fake/m"]})
    return ASGIClient(Gateway(settings))


async def test_every_response_has_an_id_and_a_plain_client_id_is_kept(openai_fake: OpenAIFake,
                                                                      tmp_path: Path) -> None:
    async with gateway_for(openai_fake, tmp_path) as gateway:
        first = await gateway.request("POST", "/v1/chat/completions", CHAT)
        second = await gateway.request("POST", "/v1/chat/completions", CHAT)
        health = await gateway.request("GET", "/health")
        own = await gateway.request("POST", "/v1/chat/completions", CHAT, headers=[(b"x-request-id", b"trace-42.a")])
        odd = await gateway.request("POST", "/v1/chat/completions", CHAT,
                                    headers=[(b"x-request-id", b"bad id\r\nx-evil: 1")])
    ids = [r.headers[b"x-request-id"].decode() for r in (first, second, health)]
    assert all(GENERATED.fullmatch(i) for i in ids) and len(set(ids)) == 3
    assert own.headers[b"x-request-id"] == b"trace-42.a"
    assert GENERATED.fullmatch(odd.headers[b"x-request-id"].decode())  # not a header's worth: replaced
    assert REQUEST_ID.get() is None  # nothing leaks out of the request


async def test_the_id_is_in_error_bodies_of_both_envelopes(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway_for(openai_fake, tmp_path) as gateway:
        missing = await gateway.request("POST", "/v1/chat/completions",
                                        json.dumps({"model": "nope", "messages": []}).encode(),
                                        headers=[(b"x-request-id", b"r-1")])
        anthropic = await gateway.request("POST", "/v1/messages", json.dumps({"model": "small"}).encode(),
                                          headers=[(b"x-request-id", b"r-2")])
    assert missing.status == 400 and missing.json()["error"]["request_id"] == "r-1"
    assert anthropic.status == 400 and anthropic.json()["type"] == "error"
    assert anthropic.json()["request_id"] == "r-2"


async def test_the_request_log_row_has_the_id(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with gateway_for(openai_fake, tmp_path) as gateway:
        answer = await gateway.request("POST", "/v1/chat/completions", CHAT)
    log = RequestLog(tmp_path / "logs.db")
    try:
        rows = log.latest(5)
    finally:
        log.close()
    assert [row.request_id for row in rows] == [answer.headers[b"x-request-id"].decode()]
    assert rows[0].to_dict()["request_id"] == rows[0].request_id  # in `patchbay logs --json` too


def test_log_lines_about_a_request_name_it() -> None:
    formatter = logging.Formatter(LOG_FORMAT)
    quiet = logging.LogRecord("patchbay.server", logging.INFO, __file__, 1, "idle", None, None)
    RequestIdFilter().filter(quiet)
    token = REQUEST_ID.set("req_abc")
    try:
        busy = logging.LogRecord("patchbay.server", logging.WARNING, __file__, 1, "upstream slow", None, None)
        RequestIdFilter().filter(busy)
    finally:
        REQUEST_ID.reset(token)
    assert formatter.format(quiet).endswith("INFO patchbay.server: idle")
    assert formatter.format(busy).endswith("WARNING patchbay.server [req_abc]: upstream slow")
