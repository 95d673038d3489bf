"""The gateway's Prometheus metrics: the process gauges read at scrape time."""

from __future__ import annotations

import asyncio

from patchbay.server.metrics import OTHER, GatewayMetrics, LabelCap, ScrapeGauge


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


def test_label_values_beyond_the_cap_count_as_other() -> None:
    cap = LabelCap(2)
    assert [cap(name) for name in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
    metrics = GatewayMetrics(max_label_values=3)
    for index in range(1000):
        metrics.record("fake", f"model-{index}", 200, 0.01, prompt_tokens=1, completion_tokens=2)
    assert len(metrics.requests.values) == 4  # three names and "other"
    assert metrics.requests.values[("fake", OTHER, "200")] == 997
    assert metrics.tokens.values[("fake", OTHER, "completion")] == 2 * 997
    assert len(metrics.latency.values) == 4
