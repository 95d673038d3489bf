"""The server-stack bench's pure parts: response parsing, each attack's pass/fail rule, the report."""

from __future__ import annotations

from bench.measure import WrkResult
from bench.server_stack import (
    ATTACKS,
    BODY,
    CANDIDATES,
    SHIPPED,
    STOCK,
    Candidate,
    Exchange,
    Outcome,
    ProbeStats,
    StackRow,
    chat_request,
    chosen,
    classify_head,
    classify_host,
    classify_http10,
    classify_idle,
    classify_slow,
    classify_stall,
    parse_response,
    report,
)
from bench.stack_apps import STREAM_PARTS


def _candidate(label: str) -> Candidate:
    return next(c for c in CANDIDATES if c.label == label)


def _row(label: str, rate: float, failing: tuple[str, ...] = ()) -> StackRow:
    attacks = {key: Outcome(key not in failing, "observed") for key, _ in ATTACKS}
    return StackRow(_candidate(label), "uvicorn 1.0", runs=[WrkResult(50, int(rate * 5), rate, {50: 1.5, 99: 3.0})],
                    attacks=attacks, probe=ProbeStats([0.002, 0.004]))


def test_parse_response_reads_status_headers_and_body() -> None:
    status, headers, body = parse_response(b"HTTP/1.1 431 Too Large\r\nContent-Length: 2\r\nX-A: b\r\n\r\nno")
    assert (status, headers, body) == (431, {"content-length": "2", "x-a": "b"}, b"no")
    assert parse_response(b"HTTP/1.1 200 OK\r\ncontent-le") == (None, {}, b"")
    assert parse_response(b"") == (None, {}, b"")


def test_chat_request_without_host_has_no_host_header() -> None:
    assert b"\r\nHost:" in chat_request()
    assert b"Host:" not in chat_request(host=False)
    assert chat_request().endswith(b"\r\n\r\n" + BODY)


def test_head_passes_only_when_rejected_and_memory_stays_flat() -> None:
    assert classify_head(431, 0.3).passed
    assert classify_head(None, 1.0).passed  # closed without an answer
    assert not classify_head(200, 0.1).passed  # accepted
    assert not classify_head(431, 40.0).passed  # rejected, but only after buffering it
    assert "+40.0 MB" in classify_head(431, 40.0).text


def test_slow_heads_pass_only_when_all_were_closed() -> None:
    assert classify_slow(200, 0, 10.0).passed
    held = classify_slow(200, 3, 10.0)
    assert not held.passed and "3/200" in held.text
    assert not classify_slow(0, 0, None).passed


def test_stalled_body_passes_when_closed_in_time() -> None:
    assert classify_stall(30.0, 408).passed
    assert "408" in classify_stall(30.0, 408).text
    assert not classify_stall(None, None).passed


def test_missing_host_must_be_400() -> None:
    assert classify_host(400).passed
    assert not classify_host(200).passed
    assert not classify_host(None).passed


def test_http10_stream_must_not_be_chunked() -> None:
    body = b"".join(STREAM_PARTS)
    assert classify_http10(200, {"connection": "close"}, body).passed
    chunked = classify_http10(200, {"transfer-encoding": "chunked"}, b"4\r\none\n\r\n")
    assert not chunked.passed and "chunked" in chunked.text
    assert not classify_http10(200, {}, b"one\n").passed  # cut short
    assert not classify_http10(None, {}, b"").passed


def test_idle_flood_needs_a_cap_and_an_answered_probe() -> None:
    assert classify_idle(1100, 100, Exchange(503, elapsed=0.002)).passed
    assert classify_idle(1100, 0, Exchange(503, elapsed=0.002)).passed  # cap on requests (uvicorn's option)
    uncapped = classify_idle(1100, 0, Exchange(200, elapsed=0.003))
    assert not uncapped.passed and "no cap" in uncapped.text and "200" in uncapped.text
    assert not classify_idle(1100, 100, Exchange(None, elapsed=5.0)).passed  # refused some, yet the probe hung


def test_probe_cell_shows_worst_latency_and_failures() -> None:
    assert ProbeStats([0.002, 0.150]).cell() == "150 ms (2 probes)"
    assert "1 of 3 unanswered" in ProbeStats([0.002, 0.003], failures=1).cell()
    assert ProbeStats().cell() == "-"


def test_chosen_names_the_shipped_stack_when_it_alone_passes() -> None:
    text = chosen([_row(STOCK, 30_000, failing=("head", "slow")), _row(SHIPPED, 27_000)])
    assert text.startswith("Chosen: ")
    assert "the numbers choose what patchbay ships" in text
    assert "failed (a) (b)" in text
    assert "10%" in text  # what the limits cost against stock uvicorn


def test_chosen_says_plainly_when_the_numbers_contradict_the_choice() -> None:
    failing = chosen([_row(SHIPPED, 27_000, failing=("idle",)), _row("granian", 26_000)])
    assert "contradict" in failing
    much_faster = chosen([_row(SHIPPED, 10_000), _row("granian", 20_000)])
    assert "do not support" in much_faster


def test_report_has_one_row_per_candidate_and_marks_missing_ones() -> None:
    missing = StackRow(_candidate("hypercorn"), unavailable="not installed (pip install hypercorn)")
    text = report([_row(SHIPPED, 27_000, failing=("host",)), missing], [("fake upstream, direct", 16_000.0, 2.0)],
                  [("json.loads (no checks)", 4.0)], 5.0)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| server stack |"))
    columns = header.count("|")
    shipped = next(line for line in lines if line.startswith(f"| {SHIPPED}"))
    absent = next(line for line in lines if line.startswith("| hypercorn"))
    assert shipped.count("|") == columns and absent.count("|") == columns
    assert "**fail**: observed" in shipped and "27,000" in shipped
    assert "not installed" in absent
    assert "Chosen: " in text and "| fake upstream, direct | 16,000 | 2.00 ms |" in text


def test_report_shows_the_other_round_and_chosen_the_spread() -> None:
    row = _row(SHIPPED, 27_000)
    row.runs.append(WrkResult(50, 100_000, 20_000.0, {50: 2.0, 99: 4.0}))
    line = next(line for line in report([row], [], [], 5.0).splitlines() if line.startswith(f"| {SHIPPED}"))
    assert "| 27,000 (20,000) | 1.50 ms |" in line
    assert "35%" in chosen([row, _row(STOCK, 30_000, failing=("head",))])
