"""``patchbay serve`` as a real process, driven by the real openai SDK (and raw HTTP where the SDK
hides what is tested), in front of the fault-injecting OpenAI fake and the Liaobots replica."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.replicas.liaobots import LiaobotsReplica
from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]

HELLO = [{"role": "user", "content": "Hello"}]
API_KEY = "sk-gateway-test-4f9a1c"


def config_for(fake: OpenAIFake, **router: Any) -> dict[str, Any]:
    return {
        "router": {"retries": 1, "first_byte_timeout": 1.0, "idle_timeout": 1.0, "timeout": 10.0, **router},
        "providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small", "fake-large"]}},
        "routes": {"small": ["fake/fake-small"], "large": ["fake/fake-large"]},
    }


@pytest_asyncio.fixture
async def gateway(openai_fake: OpenAIFake, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with GatewayProcess(config_for(openai_fake), tmp_path) as process:
        yield process


@pytest_asyncio.fixture
async def client(gateway: GatewayProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0, timeout=20) as sdk:
        yield sdk


# -- the happy paths ------------------------------------------------------------------------------


async def test_non_streaming_answer(client: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    answer = await client.chat.completions.create(model="small", messages=HELLO, max_tokens=50, temperature=0.2)
    assert answer.choices[0].message.content == openai_fake.answer
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "fake-small"
    assert answer.provider == "fake"  # type: ignore[attr-defined]
    assert answer.usage is not None and answer.usage.total_tokens > 0
    assert openai_fake.last_body["max_tokens"] == 50
    assert openai_fake.last_body["temperature"] == 0.2


async def test_streaming_answer_arrives_in_chunks(client: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    stream = await client.chat.completions.create(model="small", messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == openai_fake.answer
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for


async def test_include_usage_adds_a_last_chunk_with_the_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="small", messages=HELLO, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    assert sorted(model.id for model in page.data) == ["large", "small"]
    model = await client.models.retrieve("large")
    assert model.id == "large"
    with pytest.raises(openai.NotFoundError, match="small"):
        await client.models.retrieve("nope")


async def test_liaobots_replica_behind_the_gateway(liaobots_replica: LiaobotsReplica, tmp_path: Path) -> None:
    target = {"provider": "Liaobots", "model": "gpt-4o", "base_url": liaobots_replica.base_url}
    config = {"routes": {"gpt-4o": [target]}}
    async with GatewayProcess(config, tmp_path) as gateway, openai.AsyncOpenAI(
            base_url=gateway.api_base, api_key="unused", max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.choices[0].message.content == liaobots_replica.answer
    assert answer.provider == "Liaobots"  # type: ignore[attr-defined]
    assert liaobots_replica.violations == []


# -- errors as the SDK's exception classes --------------------------------------------------------


async def test_invalid_field_is_400_naming_it(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="small", messages=[{"role": "wizard", "content": "hi"}])
    assert info.value.status_code == 400
    assert "messages[0].role" in info.value.message


async def test_invalid_json_is_400(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{gateway.api_base}/chat/completions",
                                                          data=b"{not json") as response:
        body = await response.json()
    assert response.status == 400
    assert "not valid JSON" in body["error"]["message"]


async def test_unknown_model_is_404_listing_the_valid_ones(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert "small" in info.value.message and "large" in info.value.message


async def test_body_over_the_limit_is_413(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    config = config_for(openai_fake)
    config["server"] = {"max_body_bytes": 4096}
    async with GatewayProcess(config, tmp_path) as gateway, openai.AsyncOpenAI(
            base_url=gateway.api_base, api_key="unused", max_retries=0) as sdk:
        with pytest.raises(openai.APIStatusError) as info:
            await sdk.chat.completions.create(model="small", messages=[{"role": "user", "content": "x" * 10_000}])
    assert info.value.status_code == 413
    assert openai_fake.chat_count == 0


async def test_upstream_rate_limit_is_429(client: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_429"
    openai_fake.retry_after = 3
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="small", messages=HELLO)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "3"


async def test_upstream_failure_is_502(client: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_500"
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="small", messages=HELLO)
    assert info.value.status_code == 502
    assert "all providers failed" in info.value.message


async def test_streaming_failure_before_any_text_gets_a_status(client: openai.AsyncOpenAI,
                                                               openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_503"
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="small", messages=HELLO, stream=True)
    assert info.value.status_code == 502


async def test_slow_upstream_is_504(client: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "slow_first_byte"
    openai_fake.first_byte_delay = 5.0  # the gateway's first-byte limit is 1 s
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="small", messages=HELLO)
    assert info.value.status_code == 504


async def test_upstream_auth_failure_is_401(client: openai.AsyncOpenAI, openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "status_401"
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="small", messages=HELLO)


async def test_mid_stream_error_arrives_in_band(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.scenario = "mid_stream_error"
    async with GatewayProcess(config_for(openai_fake, mid_stream="error"), tmp_path) as gateway, \
            openai.AsyncOpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="small", messages=HELLO, stream=True)
        received: list[str] = []
        with pytest.raises(openai.APIError, match="interrupted"):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received)  # some text came first, with status 200
    assert openai_fake.answer.startswith("".join(received))


async def test_client_disconnect_cancels_the_upstream_request(gateway: GatewayProcess,
                                                              openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "stall"  # half the answer, then a long stall
    openai_fake.stall_seconds = 30.0
    async with openai.AsyncOpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="small", messages=HELLO, stream=True)
        first = await stream.__anext__()
        assert first.choices[0].delta.content
        await stream.close()
    await openai_fake.wait_until(lambda: openai_fake.disconnects == 1 and openai_fake.open_streams == 0, timeout=5)


# -- server behaviour -----------------------------------------------------------------------------


async def test_keep_alive_comments_while_waiting(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.scenario = "slow_first_byte"
    openai_fake.first_byte_delay = 0.6
    config = config_for(openai_fake)
    config["server"] = {"keepalive_interval": 0.1}
    body = {"model": "small", "messages": HELLO, "stream": True}
    async with GatewayProcess(config, tmp_path) as gateway, aiohttp.ClientSession() as http, \
            http.post(f"{gateway.api_base}/chat/completions", json=body) as response:
        text = (await response.read()).decode()
    assert response.status == 200
    assert text.startswith(": keep-alive\n\n")
    assert text.rstrip().endswith("data: [DONE]")


async def test_api_keys_are_required_when_configured(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    env = {"PATCHBAY_API_KEYS": f"other-key,{API_KEY}"}
    async with GatewayProcess(config_for(openai_fake), tmp_path, env=env) as gateway:
        async with openai.AsyncOpenAI(base_url=gateway.api_base, api_key="wrong", max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError, match="invalid API key"):
                await sdk.chat.completions.create(model="small", messages=HELLO)
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.api_base}/models") as response:
            assert response.status == 401
            assert "missing API key" in (await response.json())["error"]["message"]
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.base_url}/health") as response:
            assert response.status == 200  # health stays public
        async with openai.AsyncOpenAI(base_url=gateway.api_base, api_key=API_KEY, max_retries=0) as sdk:
            answer = await sdk.chat.completions.create(model="small", messages=HELLO)
        assert answer.choices[0].message.content == openai_fake.answer
    assert API_KEY not in gateway.log_text


async def test_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "patchbay", "serve", "--host", "0.0.0.0", "--port", "0",
        env={"PATH": os.environ["PATH"], "PATCHBAY_HOME": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert "refusing to listen on 0.0.0.0 without API keys" in err.decode()
    assert "Traceback" not in err.decode()


async def test_cors_only_for_allowed_origins(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    config = config_for(openai_fake)
    config["server"] = {"cors_origins": ["http://app.example"]}
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    async with GatewayProcess(config, tmp_path) as gateway, aiohttp.ClientSession() as http:
        async with http.options(f"{gateway.api_base}/chat/completions", headers=preflight) as response:
            assert response.status == 204
            assert response.headers["access-control-allow-origin"] == "http://app.example"
        async with http.get(f"{gateway.api_base}/models", headers={"Origin": "http://evil.example"}) as response:
            assert response.status == 200
            assert "access-control-allow-origin" not in response.headers
        async with http.get(f"{gateway.api_base}/models", headers={"Origin": "http://app.example"}) as response:
            assert response.headers["access-control-allow-origin"] == "http://app.example"


async def test_cors_is_off_by_default(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            f"{gateway.api_base}/models", headers={"Origin": "http://app.example"}) as response:
        assert "access-control-allow-origin" not in response.headers


async def test_metrics_count_requests_errors_latency_and_tokens(client: openai.AsyncOpenAI,
                                                                gateway: GatewayProcess,
                                                                openai_fake: OpenAIFake) -> None:
    await client.chat.completions.create(model="small", messages=HELLO)
    stream = await client.chat.completions.create(model="small", messages=HELLO, stream=True)
    async for _ in stream:
        pass
    openai_fake.scenario = "status_500"
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="small", messages=HELLO)
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.base_url}/metrics") as response:
        text = await response.text()
    assert response.headers["content-type"].startswith("text/plain")
    assert 'patchbay_requests_total{provider="fake",model="fake-small",status="200"} 2' in text
    assert 'patchbay_errors_total{provider="fake",model="fake-small",code="all_providers_failed"} 1' in text
    assert 'patchbay_request_duration_seconds_count{provider="fake",model="fake-small"} 3' in text
    assert 'patchbay_time_to_first_token_seconds_count{provider="fake",model="fake-small"} 1' in text
    assert 'patchbay_tokens_total{provider="fake",model="fake-small",kind="completion"}' in text


async def test_health_ready_and_unknown_paths(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.base_url}/ready") as response:
            assert response.status == 200 and (await response.json())["status"] == "ready"
        async with http.get(f"{gateway.base_url}/health") as response:
            assert (await response.json())["status"] == "ok"
        async with http.head(f"{gateway.base_url}/health") as response:  # HEAD wherever GET works
            assert response.status == 200 and await response.read() == b""
            assert int(response.headers["content-length"]) > 0
        async with http.post(f"{gateway.base_url}/health") as response:
            assert response.status == 405 and response.headers["allow"] == "GET, HEAD"
        async with http.get(f"{gateway.base_url}/v2/nothing") as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
        async with http.get(f"{gateway.api_base}/chat/completions") as response:
            assert response.status == 405 and response.headers["allow"] == "POST"


async def test_openapi_document_describes_what_the_server_accepts(gateway: GatewayProcess) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.base_url}/openapi.json") as response:
        document = await response.json()
    schemas = document["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]
    assert set(request["required"]) == {"model", "messages"}
    assert request["properties"]["temperature"]["anyOf"][0]["maximum"] == 2
    roles = schemas["ChatMessage"]["properties"]["role"]["enum"]
    assert set(roles) == {"system", "developer", "user", "assistant", "tool"}
    assert "/v1/chat/completions" in document["paths"]
    # Every role the document allows is accepted; a role it does not allow is refused.
    async with aiohttp.ClientSession() as http:
        for role in roles:
            message = {"role": role, "content": "hi", **({"tool_call_id": "call_1"} if role == "tool" else {})}
            messages = [message, {"role": "user", "content": "hello"}]
            async with http.post(f"{gateway.api_base}/chat/completions",
                                 json={"model": "small", "messages": messages}) as response:
                assert response.status == 200, (role, await response.text())
        async with http.post(f"{gateway.api_base}/chat/completions",
                             json={"model": "small", "messages": [{"role": "robot", "content": "x"}]}) as response:
            assert response.status == 400
        async with http.post(f"{gateway.api_base}/chat/completions",
                             json={"model": "small", "messages": [{"role": "tool", "content": "x"}]}) as response:
            assert response.status == 400  # as the schema's description says
            assert (await response.json())["error"]["param"] == "messages[0].tool_call_id"


async def test_workers_share_one_port(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with GatewayProcess(config_for(openai_fake), tmp_path, args=["--workers", "2"]) as gateway:
        async with openai.AsyncOpenAI(base_url=gateway.api_base, api_key="unused", max_retries=0) as sdk:
            answers = await asyncio.gather(*(sdk.chat.completions.create(model="small", messages=HELLO)
                                             for _ in range(8)))
        assert {a.choices[0].message.content for a in answers} == {openai_fake.answer}
        assert len(gateway.children()) >= 2


async def test_no_config_serves_the_embedded_model(tmp_path: Path) -> None:
    async with GatewayProcess(None, tmp_path) as gateway, openai.AsyncOpenAI(
            base_url=gateway.api_base, api_key="unused", max_retries=0, timeout=120) as sdk:
        models = [model.id for model in (await sdk.models.list()).data]
        answer = await sdk.chat.completions.create(model=models[0], messages=HELLO, max_tokens=8)
    assert models == ["smollm2-135m-instruct"]
    assert answer.provider == "Local"  # type: ignore[attr-defined]
    assert answer.choices[0].message.content
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 8


def test_error_bodies_are_json_objects() -> None:
    from patchbay.errors import AllProvidersFailed, Attempt
    from patchbay.server.asgi import error_body

    error = AllProvidersFailed([Attempt("fake", "small", "RateLimited", 429, "slow down")], model="small")
    body = json.loads(error_body(error))
    assert body["error"]["code"] == "all_providers_failed"
    assert body["error"]["type"] == "rate_limit_error"


async def test_a_client_leaving_mid_body_is_not_a_server_error(gateway: GatewayProcess,
                                                               openai_fake: OpenAIFake) -> None:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"model\": \"sma")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.base_url}/ready") as response:
        assert response.status == 200
    await gateway.stop()  # every line the server wrote has been read after this
    assert "Exception in ASGI application" not in gateway.log_text
    assert "Traceback" not in gateway.log_text
    assert openai_fake.chat_count == 0


async def test_a_client_that_stops_reading_is_let_go(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    """A client that stays connected but reads nothing more must not hold the request and its
    upstream forever (the router's deadlines cover reading the upstream, not writing to the client)."""
    openai_fake.scenario = "endless"
    openai_fake.endless_interval = 0.0  # as fast as it can: the buffers on the way fill quickly
    config = config_for(openai_fake, idle_timeout=120.0, timeout=300.0)  # far away: not what ends it
    config["server"] = {"send_timeout": 1.0, "keepalive_interval": 0.2}
    body = json.dumps({"model": "small", "messages": HELLO, "stream": True}).encode()
    async with GatewayProcess(config, tmp_path) as gateway:
        host, port = gateway.base_url.removeprefix("http://").split(":")
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, set before connecting
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (host, int(port))), 10)
            await loop.sock_sendall(sock, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                    b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await asyncio.wait_for(loop.sock_recv(sock, 256), 10)  # the answer starts; then no more reads
            assert head.startswith(b"HTTP/1.1 200")
            await openai_fake.wait_until(lambda: openai_fake.disconnects == 1 and openai_fake.open_streams == 0,
                                         timeout=60)
    assert "left its stream unread for 1 s" in gateway.log_text
    assert "Traceback" not in gateway.log_text
