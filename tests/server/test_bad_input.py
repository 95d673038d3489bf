"""Hostile and broken requests through a real ``patchbay serve``: each gets a clear 4xx naming
what is wrong, quickly, and nothing reaches the upstream or the server's error log.

Decided limits: bodies over ``server.max_body_bytes`` are 413 before parsing; JSON nested deeper
than the parser allows (several hundred levels) is 400 "nested too deeply"; more than
``MAX_MESSAGES`` (10,000) messages is 400 naming ``messages``. The Content-Type header is not
checked: a JSON body is taken whatever it is labelled, and a body that is not JSON is a 400 that
says so.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from patchbay.chat.request import MAX_MESSAGES
from tests.replicas.openai_fake import OpenAIFake
from tests.server.test_fuzz_requests import HELLO_BODY, ISSUE_BODIES
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]

LIMIT = 4 * 1024 * 1024
HELLO = [{"role": "user", "content": "Hello"}]
TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest_asyncio.fixture
async def gateway(openai_fake: OpenAIFake, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    config = {"providers": {"fake": {"base_url": openai_fake.api_base, "models": ["fake-small"]}},
              "routes": {"small": ["fake/fake-small"]}, "server": {"max_body_bytes": LIMIT}}
    async with GatewayProcess(config, tmp_path) as process:
        yield process


async def post(gateway: GatewayProcess, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.post(
            f"{gateway.api_base}/chat/completions", data=io.BytesIO(body),
            headers={"Content-Type": content_type, "Content-Length": str(len(body))}) as response:
        return response.status, await response.json()


async def test_body_over_the_limit_is_413(gateway: GatewayProcess, openai_fake: OpenAIFake) -> None:
    status, body = await post(gateway, json.dumps({"model": "small", "messages": HELLO, "pad": "x" * LIMIT}).encode())
    assert status == 413
    assert f"the limit is {LIMIT} bytes" in body["error"]["message"]
    assert openai_fake.chat_count == 0


async def test_chunked_body_over_the_limit_is_413(gateway: GatewayProcess) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (1024 * 1024)

    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.post(
            f"{gateway.api_base}/chat/completions", data=chunks()) as response:
        assert response.status == 413
        assert "over the limit" in (await response.json())["error"]["message"]


@pytest.mark.parametrize("nested", [b"[" * 100_000, b'{"model": "small", "messages": [{"role": "user", "content": ['
                                    + b'{"a": ' * 100_000])
async def test_deeply_nested_json_is_400(gateway: GatewayProcess, nested: bytes) -> None:
    status, body = await post(gateway, nested)
    assert status == 400
    assert "nested too deeply" in body["error"]["message"] or "must be of type object" in body["error"]["message"]
    await gateway.stop()
    assert "Traceback" not in gateway.log_text and "RecursionError" not in gateway.log_text


async def test_huge_message_count_is_400_naming_the_limit(gateway: GatewayProcess, openai_fake: OpenAIFake) -> None:
    messages = [{"role": "user", "content": "hi"}] * 100_000  # about 3 MB, under the body limit
    status, body = await post(gateway, json.dumps({"model": "small", "messages": messages}).encode())
    assert status == 400
    assert body["error"]["param"] == "messages"
    assert f"at most {MAX_MESSAGES} items" in body["error"]["message"]
    assert openai_fake.chat_count == 0


async def test_the_most_messages_allowed_are_served(gateway: GatewayProcess) -> None:
    messages = [{"role": "user", "content": "hi"}] * MAX_MESSAGES
    status, _ = await post(gateway, json.dumps({"model": "small", "messages": messages}).encode())
    assert status == 200


@pytest.mark.parametrize(("request_body", "param", "words"), [
    ({"model": "small", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "must be one of"),
    ({"model": "small", "messages": [{"role": "tool", "content": "hi"}]}, "messages[0].tool_call_id", "tool_call_id"),
    ({"model": "small", "messages": [{"role": "user"}]}, "messages[0].content", "no content"),
    ({"model": "small", "messages": [{"role": "user", "content": [{"text": "hi"}]}]}, "messages[0].content[0]",
     "must be an object with a type"),
    ({"model": "small", "messages": "hello"}, "messages", "must be of type array, got string"),
    ({"model": 7, "messages": HELLO}, "model", "must be of type string, got integer"),
    ({"model": "small", "messages": HELLO, "temperature": "hot"}, "temperature", "got string"),
    ({"model": "small", "messages": HELLO, "stream": "yes"}, "stream", "must be of type boolean"),
    ({"model": "small", "messages": HELLO, "max_tokens": 0}, "max_tokens", ">= 1"),
    ({"messages": HELLO}, "model", "missing required field model"),
    ({"model": "small"}, "messages", "missing required field messages"),
])
async def test_wrong_fields_are_400_naming_the_field(gateway: GatewayProcess, openai_fake: OpenAIFake,
                                                     request_body: dict[str, Any], param: str, words: str) -> None:
    status, body = await post(gateway, json.dumps(request_body).encode())
    assert status == 400, body
    assert body["error"]["param"] == param
    assert words in body["error"]["message"]
    assert openai_fake.chat_count == 0


@pytest.mark.parametrize(("raw", "words"), [
    (b"[1, 2]", "must be of type object, got array"),
    (b'"hello"', "must be of type object, got string"),
    (b"", "not valid JSON"),
    (b"\xff\xfe{\x00}", "not valid JSON"),
    (b'{"model": "sm\xffall", "messages": []}', "not valid UTF-8"),
    (b"model=small&messages=hi", "not valid JSON"),
])
async def test_a_body_that_is_not_a_json_object_is_400(gateway: GatewayProcess, raw: bytes, words: str) -> None:
    status, body = await post(gateway, raw, content_type="application/x-www-form-urlencoded")
    assert status == 400
    assert words in body["error"]["message"]


async def test_a_json_body_is_taken_whatever_its_content_type(gateway: GatewayProcess) -> None:
    status, body = await post(gateway, json.dumps({"model": "small", "messages": HELLO}).encode(), "text/plain")
    assert status == 200
    assert body["choices"][0]["message"]["content"]


async def test_whole_numbers_written_as_floats_are_integers(gateway: GatewayProcess, openai_fake: OpenAIFake) -> None:
    status, _ = await post(gateway, b'{"model": "small", "messages": [{"role": "user", "content": "hi"}], '
                                    b'"max_tokens": 50.0}')
    assert status == 200
    assert openai_fake.last_body["max_tokens"] == 50


#: Issue 15's bodies (tests/server/test_fuzz_requests.py), and a line break in a field name.
MALFORMED_NEAR_VALID = [*ISSUE_BODIES, HELLO_BODY + b', "max_tokens": 2.0, "logit_bias": {"line\\nbreak": 1000}}']


async def test_malformed_json_next_to_valid_fields_is_a_one_line_400(gateway: GatewayProcess,
                                                                     openai_fake: OpenAIFake) -> None:
    for raw in MALFORMED_NEAR_VALID:
        status, body = await post(gateway, raw)
        assert status == 400, (raw[:80], body)
        message = body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error"
        assert message.splitlines() == [message] and "Traceback" not in message
    assert openai_fake.chat_count == 0
    await gateway.stop()
    assert "Traceback" not in gateway.log_text
