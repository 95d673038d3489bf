"""Stopping ``patchbay serve`` as an orchestrator does: on SIGTERM, ``/ready`` answers 503 for
``[server] shutdown_delay`` seconds while requests are still served, then the process stops;
SIGINT ends the delay at once. A real server process, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]

BOUND = 30.0  # seconds any condition below may take on a busy machine
HELLO = {"model": "small", "messages": [{"role": "user", "content": "Hello"}]}


def config_for(fake: OpenAIFake) -> dict[str, object]:
    return {"server": {"request_log": False, "web_ui": False},
            "router": {"retries": 1, "first_byte_timeout": 5.0, "idle_timeout": 5.0, "timeout": 20.0},
            "providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small"]}},
            "routes": {"small": ["fake/fake-small"]}}


async def ready_status(http: aiohttp.ClientSession, gateway: GatewayProcess) -> int:
    """``/ready``'s status on a new connection (so with workers, any worker may answer)."""
    async with http.get(f"{gateway.base_url}/ready", headers={"Connection": "close"}) as response:
        return response.status


async def wait_not_ready(http: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
    async with asyncio.timeout(BOUND):
        while await ready_status(http, gateway) != 503:
            await asyncio.sleep(0.02)  # the next poll; bounded by BOUND


async def exit_status(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return await asyncio.wait_for(gateway.process.wait(), BOUND)


def signal_group(gateway: GatewayProcess, sig: signal.Signals) -> None:
    assert gateway.process is not None
    os.killpg(gateway.process.pid, sig)


async def test_sigterm_reports_not_ready_while_still_serving(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    env = {"PATCHBAY_SHUTDOWN_DELAY": "600"}  # longer than the test: only SIGINT ends it
    async with GatewayProcess(config_for(openai_fake), tmp_path, env=env) as gateway, \
            aiohttp.ClientSession() as http:
        assert await ready_status(http, gateway) == 200
        signal_group(gateway, signal.SIGTERM)
        await wait_not_ready(http, gateway)
        async with http.get(f"{gateway.base_url}/ready") as response:
            assert "shutting down" in (await response.json())["error"]["message"]
        async with http.post(f"{gateway.api_base}/chat/completions", json=HELLO) as response:
            assert response.status == 200  # still served: only readiness changed
            assert (await response.json())["choices"][0]["message"]["content"] == openai_fake.answer
        async with http.get(f"{gateway.base_url}/health") as response:
            assert response.status == 200  # alive
        signal_group(gateway, signal.SIGTERM)  # a second SIGTERM does not cut the delay short
        assert await ready_status(http, gateway) == 503
        signal_group(gateway, signal.SIGINT)  # Ctrl-C does
        await exit_status(gateway)
        assert "stopping in 600 s" in gateway.log_text


async def test_the_process_stops_by_itself_after_the_delay(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    env = {"PATCHBAY_SHUTDOWN_DELAY": "1"}
    async with GatewayProcess(config_for(openai_fake), tmp_path, env=env) as gateway, \
            aiohttp.ClientSession() as http:
        signal_group(gateway, signal.SIGTERM)
        status = await exit_status(gateway)
        assert status == -signal.SIGTERM  # uvicorn re-raises the signal it handled
        with pytest.raises(aiohttp.ClientConnectionError):
            await ready_status(http, gateway)


async def test_every_worker_reports_not_ready(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    env = {"PATCHBAY_SHUTDOWN_DELAY": "600"}
    async with GatewayProcess(config_for(openai_fake), tmp_path, env=env, args=["--workers", "2"]) as gateway, \
            aiohttp.ClientSession() as http:
        async with asyncio.timeout(BOUND):  # both workers up (ready answered 200 from one so far)
            while gateway.log_text.count("Application startup complete") < 2:
                await asyncio.sleep(0.02)  # the next look; bounded by BOUND
        signal_group(gateway, signal.SIGTERM)  # the supervisor passes SIGTERM on as well
        await wait_not_ready(http, gateway)
        # 20 new connections, shared by the kernel between both workers: none is still ready
        statuses = [await ready_status(http, gateway) for _ in range(20)]
        assert statuses == [503] * 20
        signal_group(gateway, signal.SIGINT)
        await exit_status(gateway)


async def test_no_delay_when_set_to_zero(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with GatewayProcess(config_for(openai_fake), tmp_path, env={"PATCHBAY_SHUTDOWN_DELAY": "0"}) as gateway:
        signal_group(gateway, signal.SIGTERM)
        assert await exit_status(gateway) == -signal.SIGTERM
        assert "stopping in" not in gateway.log_text
