"""The Vercel AI SDK (npm ``ai`` with ``@ai-sdk/openai``) against ``patchbay serve``: its default
``openai(model)`` provider speaks the Responses API, ``openai.chat(model)`` Chat Completions;
``generateText`` and ``streamText`` through both get the upstream's answer.

The packages are pinned in tests/js/package.json and its lock file; README's test command and
.ci/run install them with ``npm ci --prefix tests/js``."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess
from tests.support.paths import ROOT

pytestmark = [pytest.mark.process]

JS = ROOT / "tests" / "js"
NODE_TIMEOUT = 120.0
API_KEY = "sk-vercel-test-5c1"


def node_script() -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is not installed (Node 20 or later)"
    assert (JS / "node_modules" / "ai").is_dir(), "the npm packages are missing: run `npm ci --prefix tests/js`"
    return [node, str(JS / "ai_sdk.mjs")]


async def test_generate_and_stream_text_through_responses_and_chat(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    config = {"server": {"web_ui": False},
              "router": {"retries": 1, "first_byte_timeout": 5.0, "idle_timeout": 5.0, "timeout": 20.0},
              "providers": {"fake": {"base_url": openai_fake.api_base, "models": ["fake-small"]}},
              "routes": {"small": ["fake/fake-small"]}}
    async with GatewayProcess(config, tmp_path, env={"PATCHBAY_API_KEYS": API_KEY}) as gateway:
        process = await asyncio.create_subprocess_exec(
            *node_script(), gateway.api_base, API_KEY, "small",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT)
    assert process.returncode == 0, err.decode()
    results = json.loads(out)
    for call in ("responses.generateText", "responses.streamText", "chat.generateText", "chat.streamText"):
        assert results[call].get("text") == openai_fake.answer, (call, results[call])
        assert results[call]["finishReason"] == "stop", (call, results[call])
    assert results["responses.streamText"]["parts"] >= 1
    assert results["responses.generateText"]["usage"]["inputTokens"] is not None
