"""What an outsider can do to the gateway in bulk: label sets and ``/health`` stay bounded however
many model names are sent through a ``"*"`` route, ``/health`` shows details only with a key, a
finished stream is never written to again, ``HEAD`` works wherever ``GET`` does, and ``/ready``
says 503 while the server shuts down.

The gateway runs in this process behind a small ASGI client whose ``send`` behaves like uvicorn's:
a message after the response is complete is an error (recorded, and raised)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from patchbay.errors import InvalidRequest
from patchbay.server.app import Gateway
from patchbay.settings import RouterSettings, ServerSettings, Settings, load_settings
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient

CAP = 20
API_KEY = "sk-bounds-test-7d1e"
HELLO = [{"role": "user", "content": "Hello"}]


def settings_for(fake: OpenAIFake, **server: Any) -> Settings:
    return Settings(server=ServerSettings(web_ui=False, request_log=False, max_label_values=CAP, **server),
                    router=RouterSettings(retries=1, first_byte_timeout=5.0, idle_timeout=5.0, timeout=20.0),
                    providers={"fake": {"base_url": fake.api_base, "models": ["fake-small"]}},
                    routes={"small": ["fake/fake-small"], "*": ["fake"]})


@pytest.fixture(autouse=True)
def no_environment_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("PATCHBAY_API_KEYS", "PATCHBAY_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)


@pytest_asyncio.fixture
async def gateway(openai_fake: OpenAIFake) -> AsyncIterator[ASGIClient]:
    yield ASGIClient(Gateway(settings_for(openai_fake)))


def model_labels(metrics: str, family: str) -> set[str]:
    return set(re.findall(rf'^{family}\{{[^}}]*model="([^"]*)"', metrics, re.MULTILINE))


# -- (a) bounded label sets and /health -----------------------------------------------------------


async def test_ten_thousand_model_names_keep_metrics_and_health_bounded(openai_fake: OpenAIFake,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_API_KEYS", API_KEY)
    client = ASGIClient(Gateway(settings_for(openai_fake)))
    auth = [(b"authorization", f"Bearer {API_KEY}".encode())]
    names = [f"model-{index}" for index in range(10_000)]
    for start in range(0, len(names), 100):  # a hundred at a time, as concurrent clients would
        batch = names[start:start + 100]
        answers = await asyncio.gather(*(client.request("POST", "/v1/chat/completions", json.dumps(
            {"model": name, "messages": HELLO}).encode(), auth) for name in batch))
        assert {answer.status for answer in answers} == {200}
    assert openai_fake.chat_count == 10_000

    metrics = (await client.request("GET", "/metrics", headers=auth)).body.decode()
    for family in ("patchbay_requests_total", "patchbay_request_duration_seconds_count"):
        labels = model_labels(metrics, family)
        assert len(labels) <= CAP + 1
        assert "other" in labels
    assert 'patchbay_requests_total{provider="fake",model="other",status="200"} ' in metrics
    counted = sum(float(value) for value in re.findall(r'^patchbay_requests_total\{.*\} (\S+)$', metrics,
                                                       re.MULTILINE))
    assert counted == 10_000  # nothing was dropped, only folded into "other"
    assert len(metrics) < 100_000

    public = await client.request("GET", "/health")
    assert public.status == 200
    body = public.json()
    assert body["status"] == "ok"
    assert len(body["targets"]) <= CAP
    assert body["other"]["targets"] == 10_000 - len(body["targets"])
    assert set(body["targets"].values()) <= {"ok", "failing", "cooldown", "untried"}
    assert len(public.body) < 5_000

    detailed = (await client.request("GET", "/health", headers=auth)).json()
    assert len(detailed["targets"]) <= CAP
    assert all(entry["successes"] == 1 for entry in detailed["targets"].values())


async def test_public_health_has_no_error_text_and_the_key_shows_it(openai_fake: OpenAIFake,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_API_KEYS", API_KEY)
    client = ASGIClient(Gateway(settings_for(openai_fake)))
    openai_fake.scenario = "status_500"
    answer = await client.request("POST", "/v1/chat/completions", json.dumps(
        {"model": "small", "messages": HELLO}).encode(), [(b"authorization", f"Bearer {API_KEY}".encode())])
    assert answer.status == 502

    public = await client.request("GET", "/health")
    assert public.json()["targets"] == {"fake/fake-small": "failing"}
    assert b"500" not in public.body and b"error" not in public.body
    wrong = await client.request("GET", "/health", headers=[(b"authorization", b"Bearer sk-wrong")])
    assert wrong.status == 200 and wrong.body == public.body  # a wrong key is no error, and no details

    client.app.health._expires = 0.0  # the cached answer is not what is tested here
    detailed = await client.request("GET", "/health", headers=[(b"authorization", f"Bearer {API_KEY}".encode())])
    entry = detailed.json()["targets"]["fake/fake-small"]
    assert entry["failures"] == 1 and entry["status"] == "failing"
    assert entry["last_error"]


async def test_without_configured_keys_health_is_the_public_form(gateway: ASGIClient,
                                                                 openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_500"
    assert (await gateway.chat("small")).status == 502
    body = (await gateway.request("GET", "/health")).json()
    assert body["targets"] == {"fake/fake-small": "failing"}


async def test_many_health_probes_share_one_computation(gateway: ASGIClient) -> None:
    reads = 0
    real = gateway.app.health._read
    assert real is not None

    async def counting() -> Any:
        nonlocal reads
        reads += 1
        return await real()

    gateway.app.health._read = counting
    answers = await asyncio.gather(*(gateway.request("GET", "/health") for _ in range(50)))
    assert {answer.status for answer in answers} == {200}
    assert reads == 1


def test_the_cap_is_configured_and_checked(tmp_path: Path) -> None:
    assert ServerSettings().max_label_values == 100
    config = tmp_path / "patchbay.toml"
    config.write_text("[server]\nmax_label_values = 5\n")
    assert load_settings(config, environ={}).server.max_label_values == 5
    config.write_text("[server]\nmax_label_values = 0\n")
    with pytest.raises(InvalidRequest, match="max_label_values"):
        load_settings(config, environ={})


# -- (b) nothing is written after a stream ended ---------------------------------------------------


async def test_keep_alive_never_writes_after_the_stream_ended(openai_fake: OpenAIFake,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    client = ASGIClient(Gateway(settings_for(openai_fake, keepalive_interval=0.0005)))
    loop = asyncio.get_running_loop()
    task_errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: task_errors.append(context))
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(10):
                answers = await asyncio.gather(*(client.chat("small", stream=True) for _ in range(30)))
                assert all(answer.status == 200 and answer.body.endswith(b"data: [DONE]\n\n")
                           for answer in answers)
    finally:
        loop.set_exception_handler(previous)
    assert client.late_messages == []
    assert task_errors == []
    assert "after response already completed" not in caplog.text
    assert "never retrieved" not in caplog.text


async def test_keep_alive_comments_still_arrive_while_waiting(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "slow_first_byte"
    openai_fake.first_byte_delay = 0.3
    client = ASGIClient(Gateway(settings_for(openai_fake, keepalive_interval=0.05)))
    answer = await client.chat("small", stream=True)
    assert answer.body.startswith(b": keep-alive\n\n")
    assert answer.body.endswith(b"data: [DONE]\n\n")
    assert client.late_messages == []


async def test_a_client_that_stops_reading_at_the_very_end_is_let_go(caplog: pytest.LogCaptureFixture) -> None:
    from patchbay.server.asgi import SSEWriter

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            await asyncio.Event().wait()  # the client's buffers stay full

    writer = SSEWriter(send)
    writer.start_keep_alive(10.0, send_timeout=0.05)
    await writer.data(b"[DONE]")
    with caplog.at_level(logging.WARNING, logger="patchbay.server"):
        async with asyncio.timeout(5):  # far longer than the stall limit: a hang fails here
            await writer.end()
    assert writer.finished and "unread" in caplog.text
    await writer.comment()  # after the end: nothing is sent, nothing raised


# -- (c) HEAD and /ready --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/openapi.json", "/v1/models", "/models",
                                  "/v1/models/small"])
async def test_head_works_wherever_get_does(gateway: ASGIClient, path: str) -> None:
    gateway.app.ready = True
    get = await gateway.request("GET", path)
    head = await gateway.request("HEAD", path)
    assert get.status == head.status == 200
    assert head.body == b""
    assert head.headers[b"content-type"] == get.headers[b"content-type"]
    if path != "/metrics":  # the process gauges move between two scrapes
        assert head.headers[b"content-length"] == get.headers[b"content-length"] == str(len(get.body)).encode()


async def test_head_on_a_post_endpoint_is_405_and_allow_names_head(gateway: ASGIClient) -> None:
    head = await gateway.request("HEAD", "/v1/chat/completions")
    assert head.status == 405 and head.body == b"" and head.headers[b"allow"] == b"POST"
    post = await gateway.request("POST", "/health")
    assert post.status == 405 and post.headers[b"allow"] == b"GET, HEAD"
    assert (await gateway.request("HEAD", "/nothing")).status == 404


async def test_ready_is_503_while_shutting_down(gateway: ASGIClient) -> None:
    app = gateway.app
    assert (await gateway.request("GET", "/ready")).status == 503  # not started yet
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    replies: list[str] = []
    replied = asyncio.Event()

    async def send(message: Any) -> None:
        replies.append(message["type"])
        replied.set()

    running = asyncio.ensure_future(app({"type": "lifespan"}, lifespan.get, send))  # type: ignore[arg-type]
    await lifespan.put({"type": "lifespan.startup"})
    await asyncio.wait_for(replied.wait(), 10)
    assert replies == ["lifespan.startup.complete"]
    assert (await gateway.request("GET", "/ready")).status == 200

    app.begin_shutdown()  # what the runner does on the stop signal, before it stops accepting
    stopping = await gateway.request("GET", "/ready")
    assert stopping.status == 503 and "shutting down" in stopping.json()["error"]["message"]
    assert (await gateway.chat("small")).status == 200  # requests are still served meanwhile

    await lifespan.put({"type": "lifespan.shutdown"})
    await running
    assert replies[-1] == "lifespan.shutdown.complete"
    assert (await gateway.request("GET", "/ready")).status == 503
    assert (await gateway.request("GET", "/health")).status == 200  # alive until the process ends


async def test_metrics_count_what_the_request_log_kept_and_dropped(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    """/metrics says how many request log records were written, cut and dropped (never silently)."""
    settings = settings_for(openai_fake)
    settings = settings.with_server(request_log=True, request_log_path=str(tmp_path / "log.db"))
    app = Gateway(settings)
    app._open_request_log()
    assert app.request_log is not None
    try:
        app.request_log.dropped_backlog = 3  # as the writer counts a refused record
        text = (await ASGIClient(app).request("GET", "/metrics")).body.decode()
    finally:
        app.request_log.close()
    assert 'patchbay_request_log_records_total{outcome="dropped_backlog"} 3' in text
    assert 'patchbay_request_log_records_total{outcome="written"} 0' in text
