"""The gateway's Prometheus metrics in one process: what ``/metrics`` says, parsed as Prometheus
text by prometheus-client's own parser (the many-workers case is tests/server/test_metrics_workers.py)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from patchbay.server.metrics import OTHER, GatewayMetrics, LabelCap

Sample = tuple[str, tuple[tuple[str, str], ...]]


def parsed(metrics: GatewayMetrics) -> dict[Sample, float]:
    """Every sample of ``metrics.render()``: (name, labels in the order written) to value."""
    values = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sample.labels.items()))] = sample.value
    return values


def unlabelled(metrics: GatewayMetrics) -> dict[str, float]:
    return {name: value for (name, labels), value in parsed(metrics).items() if not labels}


def labelled(metrics: GatewayMetrics, name: str) -> dict[tuple[str, ...], float]:
    return {tuple(value for _, value in labels): value_ for (sample, labels), value_ in parsed(metrics).items()
            if sample == name}


async def test_process_gauges_are_read_when_scraped() -> None:
    metrics = GatewayMetrics()
    before = unlabelled(metrics)
    extra = [asyncio.ensure_future(asyncio.sleep(10)) for _ in range(3)]
    try:
        after = unlabelled(metrics)
    finally:
        for task in extra:
            task.cancel()
        await asyncio.gather(*extra, return_exceptions=True)
    assert after["patchbay_asyncio_tasks"] == before["patchbay_asyncio_tasks"] + 3
    assert before["process_open_fds"] > 0
    assert before["process_resident_memory_bytes"] > 1024 * 1024


def test_outside_a_loop_there_is_no_task_count_and_in_flight_starts_at_zero() -> None:
    metrics = GatewayMetrics()
    samples = unlabelled(metrics)
    assert "patchbay_asyncio_tasks" not in samples  # no running loop: unknown, so no sample
    assert samples["patchbay_requests_in_flight"] == 0
    metrics.in_flight.inc()
    metrics.in_flight.inc()
    metrics.in_flight.dec()
    assert unlabelled(metrics)["patchbay_requests_in_flight"] == 1


def test_a_request_is_counted_under_the_metric_names_and_labels_dashboards_use() -> None:
    metrics = GatewayMetrics()
    metrics.record("fake", "m", 200, 0.02, ttft=0.004, prompt_tokens=3, completion_tokens=5, key="alice", cost=0.25)
    metrics.record("fake", "m", 502, 0.3, error_code="all_providers_failed")
    metrics.cache_result("hit")
    metrics.rate_limited.inc(("alice", "requests_per_minute"))
    samples = parsed(metrics)
    target = (("provider", "fake"), ("model", "m"))
    assert samples[("patchbay_requests_total", (*target, ("status", "200")))] == 1
    assert samples[("patchbay_requests_total", (*target, ("status", "502")))] == 1
    assert samples[("patchbay_errors_total", (*target, ("code", "all_providers_failed")))] == 1
    assert samples[("patchbay_request_duration_seconds_count", target)] == 2
    assert samples[("patchbay_request_duration_seconds_bucket", (*target, ("le", "0.025")))] == 1
    assert samples[("patchbay_request_duration_seconds_bucket", (*target, ("le", "0.5")))] == 2
    assert samples[("patchbay_request_duration_seconds_bucket", (*target, ("le", "+Inf")))] == 2
    assert samples[("patchbay_time_to_first_token_seconds_count", target)] == 1
    assert samples[("patchbay_tokens_total", (*target, ("kind", "prompt")))] == 3
    assert samples[("patchbay_tokens_total", (*target, ("kind", "completion")))] == 5
    assert samples[("patchbay_cost_usd_total", (("key", "alice"), *target))] == 0.25
    assert samples[("patchbay_cache_results_total", (("result", "hit"),))] == 1
    assert samples[("patchbay_rate_limited_total", (("key", "alice"), ("limit", "requests_per_minute")))] == 1
    text = metrics.render().decode()
    assert 'patchbay_requests_total{provider="fake",model="m",status="200"} 1\n' in text  # labels in that order
    assert 'patchbay_cost_usd_total{key="alice",provider="fake",model="m"} 0.25\n' in text
    assert "_created" not in text


def test_two_gateways_in_one_process_count_apart() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.record("fake", "m", 200, 0.01)
    first.record("fake", "m", 200, 0.01)
    second.record("fake", "m", 200, 0.01)
    assert labelled(first, "patchbay_requests_total") == {("fake", "m", "200"): 2}
    assert labelled(second, "patchbay_requests_total") == {("fake", "m", "200"): 1}


def test_label_values_beyond_the_cap_count_as_other() -> None:
    cap = LabelCap(2)
    assert [cap(name) for name in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
    metrics = GatewayMetrics(max_label_values=3)
    for index in range(1000):
        metrics.record("fake", f"model-{index}", 200, 0.01, prompt_tokens=1, completion_tokens=2,
                       key=f"key-{index}", cost=0.5)
    requests = labelled(metrics, "patchbay_requests_total")
    assert len(requests) == 4  # three names and "other"
    assert requests[("fake", OTHER, "200")] == 997
    assert labelled(metrics, "patchbay_tokens_total")[("fake", OTHER, "completion")] == 2 * 997
    assert len(labelled(metrics, "patchbay_request_duration_seconds_count")) == 4
    costs = labelled(metrics, "patchbay_cost_usd_total")
    assert costs[(OTHER, "fake", OTHER)] == 0.5 * 997 and len(costs) == 4


def test_a_label_value_with_quotes_backslashes_and_newlines_stays_one_valid_sample() -> None:
    metrics = GatewayMetrics()
    odd = 'a "quoted" \\ name\nwith a newline'
    metrics.record("fake", odd, 200, 0.01)
    assert labelled(metrics, "patchbay_requests_total") == {("fake", odd, "200"): 1}


def test_the_request_log_counts_are_what_it_counted_so_far() -> None:
    metrics = GatewayMetrics()
    assert labelled(metrics, "patchbay_request_log_records_total") == {}  # no request log: no samples
    counts = {"written": 0, "dropped_backlog": 0}
    metrics.request_log_counts = lambda: dict(counts)
    assert labelled(metrics, "patchbay_request_log_records_total") == {("written",): 0, ("dropped_backlog",): 0}
    counts.update(written=5, dropped_backlog=2)
    assert labelled(metrics, "patchbay_request_log_records_total") == {("written",): 5, ("dropped_backlog",): 2}
    counts.update(written=7)
    assert labelled(metrics, "patchbay_request_log_records_total") == {("written",): 7, ("dropped_backlog",): 2}
    counts.update(written=1)  # a new log counting from zero: what it wrote is added, nothing is lost
    assert labelled(metrics, "patchbay_request_log_records_total")[("written",)] == 8
