"""The gateway's Prometheus metrics: the process gauges read at scrape time."""

from __future__ import annotations

import asyncio

from patchbay.server.metrics import GatewayMetrics, ScrapeGauge


def samples(text: bytes) -> dict[str, float]:
    values = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            values[name] = float(value)
    return values


async def test_process_gauges_are_read_when_scraped() -> None:
    metrics = GatewayMetrics()
    before = samples(metrics.render())
    extra = [asyncio.ensure_future(asyncio.sleep(10)) for _ in range(3)]
    try:
        after = samples(metrics.render())
    finally:
        for task in extra:
            task.cancel()
        await asyncio.gather(*extra, return_exceptions=True)
    assert after["patchbay_asyncio_tasks"] == before["patchbay_asyncio_tasks"] + 3
    assert before["process_open_fds"] > 0
    assert before["process_resident_memory_bytes"] > 1024 * 1024


def test_an_unknown_value_is_left_out_and_outside_a_loop_there_are_no_tasks() -> None:
    assert ScrapeGauge("x", "Unknown here.", lambda: None).samples() == []
    assert ScrapeGauge("x", "Known.", lambda: 2.5).samples() == ["x 2.5"]
    rendered = GatewayMetrics().render().decode()
    assert "# TYPE patchbay_asyncio_tasks gauge" in rendered
    assert "\npatchbay_asyncio_tasks " not in rendered  # no running loop: no sample
