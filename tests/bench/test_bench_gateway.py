"""The gateway benchmark's pure parts: wrk's streamed output, CPU from /proc, the held streams' figures,
the goals and the rendering (no wrk, nginx or server is started)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.gateway import parse_args
from bench.gateway_report import Goal, goals, goals_table, held_table, render, streamed_table, write_chart
from bench.held_streams import HeldResult, fitting_streams, memory_kib
from bench.measure import ImportTime, Options, Result, StreamResult, WrkResult
from bench.streamed import (
    MAX_SECONDS,
    STREAM_LUA,
    StreamedResult,
    cpu_from_stat,
    cpu_spent,
    long_stream_body,
    parse_stream_check,
    parse_streamed,
    run_seconds,
    stream_wrk_command,
)

WRK_STREAM_OUTPUT = """\
Running 3s test @ http://127.0.0.1:41985/v1/chat/completions
  1 threads and 20 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   385.47ms   41.22ms 550.12ms   75.00%
    Req/Sec    52.18     12.40    80.00     70.00%
  156 requests in 3.01s, 13.62MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:     51.83
Transfer/sec:      4.52MB
stream-check good=155 bad=1 chunks=500 seconds=3.010250 first_bad=no [DONE] at the end: t498 "}}]}
"""


def test_parse_stream_check() -> None:
    good, bad, chunks, seconds, first_bad = parse_stream_check(WRK_STREAM_OUTPUT)
    assert (good, bad, chunks, seconds) == (155, 1, 500, 3.01025)
    assert first_bad.startswith("no [DONE] at the end")


def test_parse_streamed_counts_bad_answers_and_socket_errors() -> None:
    result = parse_streamed(WRK_STREAM_OUTPUT, 20)
    assert result.errors == 1 + 2 + 1
    assert result.chunks_per_second == pytest.approx(155 * 500 / 3.01025)
    result.target_cpu, result.client_cpu = 2.325, 0.775
    assert result.target_cpu_per_thousand == pytest.approx(2.325 / 77.5)
    assert result.client_cpu_per_thousand == pytest.approx(0.01)


def test_parse_stream_check_without_the_line() -> None:
    with pytest.raises(ValueError, match="stream-check"):
        parse_stream_check("Running 3s test\nRequests/sec: 1.0\n")


def test_nothing_completed_has_no_rate_nor_cpu_per_chunk() -> None:
    result = parse_streamed("stream-check good=0 bad=0 chunks=500 seconds=3.0 first_bad=\n", 20)
    assert result.chunks_per_second == 0 and math.isnan(result.target_cpu_per_thousand)


def test_cpu_from_stat_reads_utime_and_stime_past_a_tricky_command() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    stat = "4242 (py (worker) x) S 1 4242 4242 0 -1 4194304 900 0 0 0 250 50 7 3 20 0 5 0\n"
    assert cpu_from_stat(stat, 100) == pytest.approx(3.0)


def test_cpu_spent_counts_new_processes_from_zero() -> None:
    assert cpu_spent({1: 2.0, 2: 1.0}, {1: 2.5, 3: 0.25}) == pytest.approx(0.75)


def test_run_seconds_stretches_only_slow_targets() -> None:
    assert run_seconds(10, 0.02, 20) == 10
    assert run_seconds(10, 0.2, 20) == 20
    assert run_seconds(10, 5.0, 20) == MAX_SECONDS


def test_the_lua_script_sends_the_probe_body() -> None:
    """bench/wrk/stream.lua and the one-answer probe ask for the same thing."""
    lua = STREAM_LUA.read_text(encoding="utf-8")
    body = long_stream_body(500).decode()
    prefix = body[:body.index('"max_tokens":')]
    assert f"'{prefix}'" in lua and "'\"max_tokens\":' .. chunks .. '}'" in lua
    assert stream_wrk_command("URL", 20, 3, 500)[-2:] == ["--", "500"]


def test_memory_kib_and_fitting_streams() -> None:
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  143360 kB\nVmRSS:\t  140288 kB\n"
    assert memory_kib(status) == (140288, 143360)
    with pytest.raises(ValueError):
        memory_kib("Name:\tpython\n")
    assert fitting_streams(20000, 28) == 9954
    assert fitting_streams(100, 90) == 0


def test_held_result_per_stream_and_extrapolation() -> None:
    held = HeldResult(10_000, streams=9_900, fd_limit=20_000, completed=9_900, baseline_kib=60 * 1024,
                      held_rss_kib=60 * 1024 + 9_900 * 40, peak_kib=460 * 1024)
    assert held.capped and held.all_completed
    assert held.per_stream_kib == pytest.approx(40)
    assert held.peak_at(10_000) == pytest.approx(460 * 1024 + 100 * 40)
    assert held.peak_at(100) == held.peak_kib


# --- goals and rendering -------------------------------------------------------------------------


def wrk(rate: float, p50: float) -> WrkResult:
    return WrkResult(50, int(rate * 10), rate, {50: p50, 75: p50, 90: p50, 99: p50 * 2})


def target(key: str, rate: float, single_p50: float, first_byte: float, chunks_per_second: float) -> Result:
    streamed = StreamedResult(20, 500, int(chunks_per_second * 10 / 500), 0, 10.0, target_cpu=1.0, client_cpu=0.2,
                              single_seconds=0.02)
    return Result(key, "1.0", loaded=wrk(rate, 5.0), single=wrk(rate, single_p50),
                  stream=StreamResult([first_byte] * 5, 0), streamed=streamed, peak_rss_mib=50.0)


def run_results() -> dict[str, Result]:
    return {r.key: r for r in [
        target("direct", 10_000, 0.10, 0.70, 200_000),
        target("patchbay", 5_000, 0.35, 1.00, 80_000),
        target("patchbay-nolog", 5_500, 0.34, 0.95, 85_000),
        target("nginx", 8_000, 0.20, 0.90, 150_000),
        target("litellm", 50, 20.0, 25.0, 800),
        target("g4f", 150, 7.0, 7.0, 1_200),
    ]}


def by_name(table: list[Goal], start: str) -> Goal:
    return next(goal for goal in table if goal.name.startswith(start))


def test_goals_from_one_run() -> None:
    held = HeldResult(10_000, streams=10_000, completed=10_000, baseline_kib=60 * 1024,
                      held_rss_kib=460 * 1024, peak_kib=470 * 1024)
    table = goals(run_results(), ImportTime(120, 20), held)
    assert by_name(table, "throughput vs nginx").value == "0.62x" and by_name(table, "throughput vs nginx").met
    assert by_name(table, "throughput vs g4f").met and by_name(table, "throughput vs LiteLLM").met
    streamed = by_name(table, "streamed chunks/s vs nginx")
    assert streamed.value == "0.53x" and streamed.met and streamed.target == ">= 0.5x"
    single = by_name(table, "one client p50")
    assert single.value == "+0.250 ms" and single.met and single.target == "<= 0.3 ms"
    first = by_name(table, "streaming first byte")
    assert first.value == "+0.300 ms" and first.met and first.target == "<= 0.5 ms"
    memory = by_name(table, "10,000 concurrent streams")
    assert memory.met and memory.value == "470 MiB, 10,000/10,000 complete" and memory.note == ""
    assert by_name(table, "`import patchbay`").met


def test_goals_missed_and_unmeasured() -> None:
    results = run_results()
    results["patchbay"].streamed.good //= 4  # type: ignore[union-attr]
    results["patchbay"].streamed.bad = 1  # type: ignore[union-attr]
    held = HeldResult(10_000, streams=9_900, fd_limit=20_000, completed=9_899, failed=1, baseline_kib=60 * 1024,
                      held_rss_kib=60 * 1024 + 9_900 * 100, peak_kib=1000 * 1024)
    table = goals(results, None, held)
    streamed = by_name(table, "streamed chunks/s vs nginx")
    assert streamed.met is False and "errors in patchbay serve" in streamed.note
    memory = by_name(table, "10,000 concurrent streams")
    assert memory.met is False and "measured at 9,900" in memory.note and "1 failed" in memory.note
    assert by_name(table, "`import patchbay`").met is None
    results.pop("nginx")
    assert by_name(goals(results, None, None), "streamed chunks/s vs nginx").met is None
    assert by_name(goals(results, None, None), "10,000 concurrent streams").met is None


def test_a_capped_held_run_is_judged_on_its_extrapolation() -> None:
    held = HeldResult(10_000, streams=9_950, fd_limit=20_000, completed=9_950, baseline_kib=60 * 1024,
                      held_rss_kib=60 * 1024 + 9_950 * 40, peak_kib=460 * 1024)
    memory = by_name(goals(run_results(), None, held), "10,000 concurrent streams")
    assert memory.met and "open-file limit 20,000" in memory.note and "extrapolated to 10,000: 462 MiB" in memory.note


def test_tables_and_section_render() -> None:
    results = [*run_results().values(), Result("g4f", unavailable="install failed")]
    held = HeldResult(2_000, streams=2_000, first_chunk=2_000, held=2_000, released=2_000, completed=2_000,
                      baseline_kib=62 * 1024, held_rss_kib=137 * 1024, peak_kib=140 * 1024, open_seconds=3.5)
    streamed = streamed_table(results)
    assert "| patchbay serve | 80,000 | 1,600 (10.0 s) | 0.53x | 1.25 ms | 0.25 ms | 20.0 ms | 0 |" in streamed
    assert "| g4f API server | not available: install failed |" in streamed
    assert "| 2,000 | 2,000 / 2,000 | 2,000 / 0 | 62 MiB | 137 MiB | 140 MiB | 38.4 KiB | 3.5 s |" in held_table(held)
    assert held_table(None).startswith("Held streams: not measured")
    table = goals(run_results(), None, held)
    section = render("python -m bench.gateway", Options(10, 5, 50, 1, 300), results, table, None, {"wrk": "4.1"},
                     False, 0.1, held)
    assert section.startswith("## Gateways")
    for part in (streamed, held_table(held), goals_table(table), "patchbay serve, request log off"):
        assert part in section


@pytest.mark.process  # matplotlib may start fc-list for its font cache
def test_the_chart_has_the_streamed_panel(tmp_path: Path) -> None:
    path = tmp_path / "gateway.png"
    assert write_chart(list(run_results().values()), path)
    assert path.stat().st_size > 10_000


def test_new_options() -> None:
    args = parse_args(["--only", "direct,patchbay-nolog", "--stream-clients", "8", "--stream-chunks", "50",
                       "--stream-duration", "0", "--held-streams", "0"])
    assert args.targets == ["direct", "patchbay-nolog"]
    assert (args.stream_clients, args.stream_chunks, args.stream_duration, args.held_streams) == (8, 50, 0, 0)
    defaults = parse_args([])
    assert (defaults.stream_clients, defaults.stream_chunks, defaults.held_streams) == (20, 500, 10_000)
    with pytest.raises(SystemExit):
        parse_args(["--held-streams", "-1"])
