"""``patchbay serve --workers 2``: one ``/metrics``, whichever worker answers, sums every worker's
counts (prometheus-client's multiprocess files), also once a worker was killed and replaced."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]

BOUND = 60.0  # seconds any one wait below may take on a busy machine
MAX_REQUESTS = 400  # sent until both workers served some; the kernel shares new connections out
Samples = dict[str, list[tuple[dict[str, str], float]]]  # name: (labels, value) of each sample
BODY = {"model": "small", "messages": [{"role": "user", "content": "Hello"}]}


def config_for(fake: OpenAIFake) -> dict[str, Any]:
    return {
        "router": {"retries": 1, "first_byte_timeout": 5.0, "idle_timeout": 5.0, "timeout": 10.0},
        "providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small"]}},
        "routes": {"small": ["fake/fake-small"]},
    }


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time: any worker may answer
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def workers(gateway: GatewayProcess) -> set[int]:
    """The supervisor's worker processes (uvicorn spawns each as a new interpreter)."""
    found = set()
    for pid in gateway.children():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and b"resource_tracker" not in command:
            found.add(pid)
    return found


def metrics_dir(pid: int) -> Path:
    """The multiprocess directory a worker was started with (its environment)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    value = next((entry for entry in entries if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR=")), None)
    assert value is not None, f"worker {pid} was started without PROMETHEUS_MULTIPROC_DIR"
    return Path(value.split(b"=", 1)[1].decode())


def own_requests(directory: Path, pid: int) -> float:
    """What one worker counted itself: the requests in its own file only."""
    path = directory / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    return sum(sample.value for family in MultiProcessCollector.merge([str(path)])
               for sample in family.samples if sample.name == "patchbay_requests_total")


async def scrape(http: aiohttp.ClientSession, gateway: GatewayProcess) -> Samples:
    async with http.get(f"{gateway.base_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'patchbay_requests_total{provider="fake",model="fake-small",status="200"} ' in text  # declared order
    samples: Samples = {}
    for family in text_string_to_metric_families(text):  # valid Prometheus text, or this raises
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


async def chat(http: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
    async with http.post(f"{gateway.api_base}/chat/completions", json=BODY) as response:
        assert response.status == 200, await response.text()


def live(samples: Samples) -> set[str]:
    """The workers with per-process series."""
    return {labels["pid"] for labels, _ in samples.get("process_open_fds", [])}


async def until(http: aiohttp.ClientSession, gateway: GatewayProcess, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` holds of what ``/metrics`` says (bounded by BOUND); the last scrape."""
    async with asyncio.timeout(BOUND):
        while not done(samples := await scrape(http, gateway)):
            await asyncio.sleep(0.05)  # the next look; bounded by BOUND
    return samples


async def until_written(http: aiohttp.ClientSession, gateway: GatewayProcess, count: int) -> None:
    """Until the request log records written, summed over the workers, are ``count`` (every
    worker adds what its writer counted once a second)."""
    def written(samples: Samples) -> bool:
        value = sum(value for labels, value in samples.get("patchbay_request_log_records_total", [])
                    if labels["outcome"] == "written")
        assert value <= count
        return value == count
    await until(http, gateway, written)


async def until_started(gateway: GatewayProcess, count: int) -> None:
    async with asyncio.timeout(BOUND):
        while gateway.log_text.count("Application startup complete") < count:
            await asyncio.sleep(0.02)  # the next look; bounded by BOUND


async def test_one_metrics_sums_the_workers_and_keeps_a_replaced_workers_counts(
        openai_fake: OpenAIFake, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with GatewayProcess(config_for(openai_fake), tmp_path, args=["--workers", "2"]) as gateway:
        await until_started(gateway, 2)
        pids = workers(gateway)
        assert len(pids) == 2
        directory = metrics_dir(next(iter(pids)))
        assert {metrics_dir(pid) for pid in pids} == {directory}

        sent = 0
        while sent < MAX_REQUESTS and not all(own_requests(directory, pid) for pid in pids):
            await chat(http, gateway)
            sent += 1
        assert all(own_requests(directory, pid) > 0 for pid in pids), "one worker served every request"
        assert sum(own_requests(directory, pid) for pid in pids) == sent

        for _ in range(10):  # each scrape on a new connection: either worker answers with the sum
            samples = await scrape(http, gateway)
            assert total(samples, "patchbay_requests_total") == sent
            assert total(samples, "patchbay_request_duration_seconds_count") == sent
            assert {labels["pid"] for labels, _ in samples["process_open_fds"]} <= {str(pid) for pid in pids}
        # summed over the live workers; a worker counts a request out just after answering it
        await until(http, gateway, lambda samples: total(samples, "patchbay_requests_in_flight") == 0)

        await until_written(http, gateway, sent)  # each worker's writer counts its own records
        killed = next(iter(pids))
        os.kill(killed, signal.SIGKILL)
        await until_started(gateway, 3)  # the supervisor started a replacement
        replaced = workers(gateway)
        assert killed not in replaced and len(replaced) == 2

        for _ in range(5):
            await chat(http, gateway)
        # the survivor and the new worker refresh their per-process series once a second
        samples = await until(http, gateway, lambda samples: live(samples) == {str(pid) for pid in replaced})
        assert total(samples, "patchbay_requests_total") == sent + 5  # the killed worker's counts stay
        assert str(killed) not in live(samples)  # its per-process series went with it
        await until_written(http, gateway, sent + 5)
    assert not directory.exists()  # removed when the server stopped
