"""bench/transports.py at a tiny size: every candidate measured in every table, patchbay serve measured
with each transport it can be told to use, and the fault matrix right about patchbay's transports
(and able to tell a wrong one)."""

from __future__ import annotations

import shutil

import pytest

from bench.transport_candidates import CANDIDATES, unavailable_reason
from bench.transports import (
    SCENARIOS,
    TLS_ROWS,
    Results,
    fault_matrix,
    gateway_transports,
    miss_notes,
    parse_args,
    render,
    run,
)
from patchbay.net.pool import ConnectionPool, PooledResponse
from patchbay.net.transport import IncompleteResponse, UpstreamRequest

pytestmark = [pytest.mark.process]  # the benchmark starts the fake upstream and patchbay serve

TINY = ["--rounds", "1", "--requests", "20", "--tls-requests", "10", "--concurrency", "1,4", "--events", "50",
        "--paced-events", "5", "--gap-us", "200", "--streams", "1", "--gateway-duration", "1", "--no-faults",
        "--no-write"]


def test_every_row_is_measured() -> None:
    opts, _ = parse_args(TINY)
    results = run(opts)
    available = [name for name in CANDIDATES if not unavailable_reason(name)]
    assert {"pool", "curl", "aiohttp", "curl-session"} <= set(available)
    assert set(results.unavailable) == set(CANDIDATES) - set(available)
    for metric in ("c1", "c4", "burst", "paced"):
        by_name = results.samples[metric]
        assert set(by_name) == set(available), metric
        for name, samples in by_name.items():
            [sample] = samples
            assert sample.errors == 0, (metric, name)
            assert sample.rate > 0 and sample.cpu > 0, (metric, name)
    for name in available:  # every event of every stream was read (reads counted, none lost)
        assert results.samples["burst"][name][0].reads >= 1
    # A kept-alive POST opens no new upstream connection; libcurl's transport opens one per POST.
    assert results.samples["c4"]["pool"][0].connections == 0
    assert results.samples["c4"]["curl"][0].connections == pytest.approx(1000, rel=0.05)

    if shutil.which("nginx") and shutil.which("openssl"):  # over TLS: every row, HTTP/2 where offered
        rows = {label for label, name, _ in TLS_ROWS if name in available}
        for metric in ("tls-c1", "tls-c4"):
            assert set(results.samples[metric]) == rows, metric
            assert all(samples[0].errors == 0 for samples in results.samples[metric].values()), metric
        assert results.samples["tls-c4"]["pool"][0].protocol == "HTTP/1.1"
        assert results.samples["tls-c4"]["curl, chrome"][0].protocol == "HTTP/2.0"
    else:
        assert "nginx" in results.tls_note

    if shutil.which("wrk"):
        assert list(results.gateway) == gateway_transports()
        for samples in results.gateway.values():
            assert samples[0].errors == 0 and samples[0].rate > 0
    else:
        assert "wrk" in results.gateway_note

    text = render(results, opts, "python -m bench.transports ...")
    for name in available:
        assert text.count(f"| `{name}` |") >= 2, name  # the client table and the streaming table
    for reason in results.unavailable.values():
        assert reason in text


async def test_the_fault_matrix_finds_patchbays_transports_correct() -> None:
    matrix = await fault_matrix(["pool", "curl"])
    assert list(matrix) == [scenario.key for scenario in SCENARIOS]
    wrong = {(key, name): outcome.cell for key, row in matrix.items() for name, outcome in row.items()
             if not outcome.correct}
    assert wrong == {}
    assert matrix["warm-post-dropped"]["pool"].sent == 1
    assert matrix["warm-late-post"]["pool"].outcome == "FirstByteTimeoutError"


class RetryingPool(ConnectionPool):
    """A wrong transport: sends any request again after the connection broke (the double-send bug)."""

    async def send(self, request: UpstreamRequest, *, connect_timeout: float | None = None,
                   first_byte_timeout: float | None = None) -> PooledResponse:
        try:
            return await super().send(request, connect_timeout=connect_timeout, first_byte_timeout=first_byte_timeout)
        except IncompleteResponse:
            return await super().send(request, connect_timeout=connect_timeout,
                                      first_byte_timeout=first_byte_timeout)


async def test_the_fault_matrix_catches_a_post_sent_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CANDIDATES, "retrying", RetryingPool)
    matrix = await fault_matrix(["retrying"], only=["warm-post-dropped"])
    outcome = matrix["warm-post-dropped"]["retrying"]
    assert outcome.sent == 2
    assert not outcome.correct
    assert outcome.cell.startswith("✗")
    [note] = miss_notes(Results(faults=matrix), ["retrying"])
    assert "twice" in note
