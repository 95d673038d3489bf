"""What the gateway benchmark reports: the goals, the tables, the docs/benchmarks.md section and the chart.

Pure formatting of results already measured (bench/measure.py), plus the versions and machine line
that make a run reproducible. Goals are computed from one run only, so ratios never mix runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.held_streams import OPENING, WARMUP, HeldResult
from bench.measure import (
    API_KEY,
    ROOT,
    ImportTime,
    Options,
    Result,
    first_line,
    request_body,
    wrk_command,
    wrk_version,
)
from bench.streamed import MAX_SECONDS, MIN_ROUNDS, stream_wrk_command
from bench.targets import LABELS, Context, nginx_version, package_version, peer_python
from bench.upstream import LONG_MODEL

__all__ = [
    "CHART", "HELD_GOAL_STREAMS", "HELD_GOAL_MIB", "Goal", "goals", "throughput_goal", "streamed_goal", "added_goal",
    "held_goal", "versions", "machine", "ms", "error_cell", "results_table", "streamed_table", "held_table",
    "goals_table", "render", "write_chart",
]

log = logging.getLogger("bench.gateway")  # one logger for the whole benchmark, so its output reads as one

CHART = ROOT / "docs" / "gateway.png"
HELD_GOAL_STREAMS = 10_000  # concurrent held streams the goal is about
HELD_GOAL_MIB = 1024.0  # peak RSS they must stay under


# --- goals ---------------------------------------------------------------------------------------


@dataclass
class Goal:
    """One goal: patchbay's value, the target it must reach, and whether it did (None: not measured)."""

    name: str
    value: str
    target: str
    met: bool | None
    note: str = ""

    @property
    def status(self) -> str:
        text = "n/a" if self.met is None else "met" if self.met else "**missed**"
        return f"{text} ({self.note})" if self.note else text


def _error_note(*results: Result) -> str:
    """Which of the compared targets had errors ('' if none), so a ratio is never read without them."""
    flagged = [LABELS[r.key] for r in results if r.errors]
    return f"errors in {', '.join(flagged)}" if flagged else ""


def throughput_goal(patchbay: Result | None, key: str, peer: Result | None, minimum: float) -> Goal:
    """patchbay's throughput as a multiple of a peer's, against a minimum ratio."""
    name = f"throughput vs {LABELS[key]}"
    if not (patchbay and peer and patchbay.measured and peer.measured):
        return Goal(name, "not measured", f">= {minimum:g}x", None)
    assert patchbay.loaded and peer.loaded
    ratio = patchbay.loaded.requests_per_second / peer.loaded.requests_per_second
    met = ratio >= minimum and not patchbay.errors
    return Goal(name, f"{ratio:.2f}x", f">= {minimum:g}x", met, _error_note(patchbay, peer))


def added_goal(name: str, patchbay: Result | None, direct: Result | None, pick: Callable[[Result], float],
               maximum: float) -> Goal:
    """The latency patchbay adds over calling the upstream directly, against a maximum."""
    if not (patchbay and direct and patchbay.measured and direct.measured):
        return Goal(name, "not measured", f"<= {maximum:g} ms", None)
    added = pick(patchbay) - pick(direct)
    return Goal(name, f"{added:+.3f} ms", f"<= {maximum:g} ms", added <= maximum and not patchbay.errors,
                _error_note(patchbay, direct))


def streamed_goal(patchbay: Result | None, key: str, peer: Result | None, minimum: float) -> Goal:
    """patchbay's streamed relay rate (chunks/s) as a multiple of a peer's, against a minimum ratio."""
    name = f"streamed chunks/s vs {LABELS[key]}"
    if not (patchbay and peer and patchbay.streamed and peer.streamed and peer.streamed.chunks_per_second):
        return Goal(name, "not measured", f">= {minimum:g}x", None)
    ratio = patchbay.streamed.chunks_per_second / peer.streamed.chunks_per_second
    flagged = [LABELS[r.key] for r in (patchbay, peer) if r.streamed and r.streamed.errors]
    return Goal(name, f"{ratio:.2f}x", f">= {minimum:g}x", ratio >= minimum and not patchbay.streamed.errors,
                f"errors in {', '.join(flagged)}" if flagged else "")


def held_goal(held: HeldResult | None) -> Goal:
    """Peak RSS with the held streams open, against HELD_GOAL_MIB, every stream completing.

    When fewer streams fit the open-file limit than the goal names, the peak is extrapolated to
    the goal's count with the measured RSS per stream, and the note says so."""
    name = f"{HELD_GOAL_STREAMS:,} concurrent streams on one worker: peak RSS, all complete"
    target = f"< {HELD_GOAL_MIB:,.0f} MiB, all complete"
    if held is None or held.unavailable or not held.streams:
        why = held.unavailable if held and held.unavailable else ""
        return Goal(name, "not measured", target, None, why[:80])
    peak = held.peak_kib / 1024
    value = f"{peak:,.0f} MiB, {held.completed:,}/{held.streams:,} complete"
    notes = []
    if held.streams < HELD_GOAL_STREAMS:
        peak = held.peak_at(HELD_GOAL_STREAMS) / 1024
        notes.append(f"measured at {held.streams:,}"
                     + (f": the open-file limit {held.fd_limit:,} fits no more, two descriptors per stream"
                        if held.capped else "")
                     + f"; extrapolated to {HELD_GOAL_STREAMS:,}: {peak:,.0f} MiB")
    if held.failed:
        notes.append(f"{held.failed} failed")
    return Goal(name, value, target, peak < HELD_GOAL_MIB and held.all_completed, "; ".join(notes))


def goals(results: dict[str, Result], imports: ImportTime | None, held: HeldResult | None = None) -> list[Goal]:
    """The issue's goals, all computed from this run (patchbay with its request log on, the default)."""
    patchbay, direct = results.get("patchbay"), results.get("direct")
    table = [throughput_goal(patchbay, peer, results.get(peer), minimum)
             for peer, minimum in (("g4f", 10), ("litellm", 25), ("nginx", 0.5))]
    table.append(streamed_goal(patchbay, "nginx", results.get("nginx"), 0.5))
    table.append(added_goal("one client p50, added over direct", patchbay, direct,
                            lambda r: r.single.p50 if r.single else float("nan"), 0.3))
    table.append(added_goal("streaming first byte p50, added over direct", patchbay, direct,
                            lambda r: r.stream.p50 if r.stream else float("nan"), 0.5))
    table.append(held_goal(held))
    if imports:
        table.append(Goal('`import patchbay` (wall time minus `python -c "pass"`)', f"{imports.added:.0f} ms",
                          "< 150 ms", imports.added < 150))
    else:
        table.append(Goal("`import patchbay`", "not measured", "< 150 ms", None))
    return table


# --- versions, machine -----------------------------------------------------------------------------


def patchbay_changed() -> bool:
    """Whether patchbay/ differs from the commit (read-only: GIT_OPTIONAL_LOCKS=0 keeps git from writing)."""
    done = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "patchbay"], capture_output=True,
                          text=True, timeout=30, check=False, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    return bool(done.stdout.strip())


def versions(ctx: Context, results: list[Result]) -> dict[str, str]:
    """Versions of everything in the measurement path, for the report."""
    found = {"Python": platform.python_version()}
    for name in ("patchbay", "aiohttp", "uvicorn", "uvloop", "httptools", "msgspec"):
        found[name] = package_version(sys.executable, name) or "not installed"
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if commit:
        found["patchbay"] += f" (commit {commit}{' + uncommitted changes' if patchbay_changed() else ''})"
    for peer, label in (("litellm", "LiteLLM"), ("g4f", "g4f")):
        python = peer_python(ctx.peers / peer)
        if python.exists():
            found[label] = f"{package_version(python, peer)} (with uvicorn {package_version(python, 'uvicorn')})"
    found["nginx"] = nginx_version()
    found["wrk"] = wrk_version()
    return found


def machine() -> str:
    """nproc, CPU model, memory and OS, in one line."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    memory = f"{int(total.group(1)) / 1024 / 1024:.1f} GiB RAM, " if total else ""
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores (nproc), {model.group(1).strip() if model else platform.processor()}, {memory}" \
           f"{platform.system()} {platform.release()} {platform.machine()}"


# --- tables and the section ------------------------------------------------------------------------


def ms(value: float | None) -> str:
    """A latency for the table: two significant decimals below 10 ms, seconds from 1 s."""
    if value is None or value != value:  # None or NaN
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def error_cell(result: Result) -> str:
    """'0', or the count in bold with where the errors came from (so they are never hidden)."""
    if not result.errors:
        return "0"
    parts = []
    for label, run in (("load", result.loaded), ("one client", result.single)):
        if run and run.errors:
            sockets = ", ".join(f"{kind} {n}" for kind, n in run.socket_errors.items() if n)
            parts.append(f"{label}: {run.non_2xx} non-2xx" + (f", socket {sockets}" if sockets else ""))
    if result.stream and result.stream.failures:
        parts.append(f"stream: {result.stream.failures} failed ({result.stream.first_failure[:60]})")
    return f"**{result.errors}** ({'; '.join(parts)})"


def results_table(results: list[Result]) -> str:
    """One markdown row per target, or why it was not measured."""
    rows = ["| target | version | req/s | p50 | p99 | errors | one client p50 / p99 | "
            "streaming first byte p50 / p99 | peak RSS |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in results:
        name = LABELS[r.key] + (" ⚠" if r.errors else "")
        if not r.measured or not (r.loaded and r.single and r.stream):
            rows.append(f"| {name} | {r.version or '-'} | not available: {r.unavailable} | | | | | | |")
            continue
        rows.append(f"| {name} | {r.version} | {r.loaded.requests_per_second:,.0f} | {ms(r.loaded.p50)} | "
                    f"{ms(r.loaded.p99)} | {error_cell(r)} | {ms(r.single.p50)} / {ms(r.single.p99)} | "
                    f"{ms(r.stream.p50)} / {ms(r.stream.p99)} | {r.peak_rss_mib or 0:.0f} MiB |")
    return "\n".join(rows)


def _cpu(value: float) -> str:
    return ms(value * 1000)  # seconds per 1,000 chunks, shown as ms (= µs per chunk)


def streamed_table(results: list[Result]) -> str:
    """The streamed relay run: one markdown row per target."""
    rows = ["| target | chunks/s | answers (in s) | vs nginx | target CPU per 1,000 chunks | "
            "wrk CPU per 1,000 chunks | one answer alone | errors |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    nginx = next((r.streamed for r in results if r.key == "nginx" and r.streamed), None)
    for r in results:
        streamed = r.streamed
        if streamed is None:
            why = r.unavailable or r.streamed_unavailable or "not measured"
            rows.append(f"| {LABELS[r.key]} | not available: {why} | | | | | | |")
            continue
        ratio = f"{streamed.chunks_per_second / nginx.chunks_per_second:.2f}x" \
            if nginx and nginx.chunks_per_second else "-"
        errors = "0" if not streamed.errors else f"**{streamed.errors}** ({streamed.bad} wrong or incomplete" + (
            ", socket " + ", ".join(f"{kind} {n}" for kind, n in streamed.socket_errors.items() if n)
            if any(streamed.socket_errors.values()) else "") + (f": {streamed.first_bad[:60]}" if streamed.first_bad
                                                                  else "") + ")"
        rows.append(f"| {LABELS[r.key]}{' ⚠' if streamed.errors else ''} | {streamed.chunks_per_second:,.0f} | "
                    f"{streamed.good:,} ({streamed.seconds:.1f} s) | {ratio} | "
                    f"{_cpu(streamed.target_cpu_per_thousand)} | {_cpu(streamed.client_cpu_per_thousand)} | "
                    f"{ms(streamed.single_seconds * 1000)} | {errors} |")
    return "\n".join(rows)


def held_table(held: HeldResult | None) -> str:
    """The held-streams run as a one-row markdown table (or why it did not run)."""
    if held is None:
        return "Held streams: not measured (patchbay not selected, or --held-streams 0)."
    if held.unavailable:
        return f"Held streams: not available: {held.unavailable}"
    streams = f"{held.streams:,}" + (f" of {held.requested:,} asked (open-file limit {held.fd_limit:,})"
                                     if held.capped else "")
    failed = f"**{held.failed:,}** ({held.first_failure[:60]})" if held.failed else "0"
    return "\n".join([
        "| held streams | first chunk / held by the upstream | completed / failed | VmRSS idle | VmRSS all held | "
        "peak (VmHWM) | RSS per stream | time to hold all |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
        f"| {streams} | {held.first_chunk:,} / {held.held:,} | {held.completed:,} / {failed} | "
        f"{held.baseline_kib / 1024:,.0f} MiB | {held.held_rss_kib / 1024:,.0f} MiB | "
        f"{held.peak_kib / 1024:,.0f} MiB | "
        f"{held.per_stream_kib:,.1f} KiB | {held.open_seconds:.1f} s |",
    ])


def goals_table(table: list[Goal]) -> str:
    """The goals as a markdown table."""
    rows = ["| goal | patchbay | target | result |", "|---|---:|---:|---|"]
    rows += [f"| {g.name} | {g.value} | {g.target} | {g.status} |" for g in table]
    return "\n".join(rows)


def render(command: str, opts: Options, results: list[Result], table: list[Goal], imports: ImportTime | None,
           found_versions: dict[str, str], chart: bool, load: float, held: HeldResult | None = None) -> str:
    """The whole docs/benchmarks.md section."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    streamed_cmd = stream_wrk_command("URL", opts.stream_clients, opts.stream_duration, opts.stream_chunks)
    lines = [
        "## Gateways: patchbay serve vs LiteLLM, g4f and nginx, in front of one fake upstream",
        "",
        f"Command: `{command}` (from the repository root). Date: {now}.",
        f"Machine: {machine()}; load average {load:.2f} at the start (other work on the machine skews results).",
        "",
        "Every target fronts the same fixed fake upstream (`bench/upstream.py`: precomputed tiny answers, one "
        "aiohttp worker on uvloop) on 127.0.0.1, and runs alone (started, polled until it answers, measured, "
        "stopped) with one worker, so targets never compete for the cores. Requests: "
        f"`{request_body().decode()}` with `Authorization: Bearer {API_KEY}` (LiteLLM's master key; the others "
        "ignore it). Load: `" + shlex.join(wrk_command("URL", opts.connections, opts.duration)) + f"` after a "
        f"{opts.warmup:g} s warm-up; one client: the same with `-c1 -d{opts.single_duration:g}s`. Streaming: "
        f"{opts.streams} sequential `\"stream\": true` requests on one keep-alive connection (aiohttp client), "
        "time from sending the request to the first SSE `data:` line, every answer checked for the upstream's "
        "text. Peak RSS: VmHWM summed over the target's processes (for the direct row, the upstream's). "
        "Errors (non-2xx answers, socket errors, failed or wrong streams) are counted, never hidden: a ⚠ row "
        "had some. LiteLLM and g4f start as their documentation says, offline, with their default logging; "
        "patchbay checks the client's key (`PATCHBAY_API_KEYS`) as LiteLLM checks its master key, and runs "
        "twice: with its request log on (the default; every exchange recorded in SQLite) and with `--no-log`; "
        "the goals use the default.",
        "",
        results_table(results),
        "",
        f"Streamed relay: `{shlex.join(streamed_cmd)}`: {opts.stream_clients} connections, each asking, one "
        f"request after another, for a streamed answer of {opts.stream_chunks} chunks from the upstream's "
        f"`{LONG_MODEL}` model, which writes each SSE event on its own (one write, one TCP send per event, back "
        "to back), as real upstreams send token by token; a target that reads slower than that finds several "
        "events per read. Before it: one answer alone (checked; its time sizes the run), a "
        f"{opts.warmup:g} s wrk warm-up, and a wait until the target is idle again (a slow target may still be "
        "relaying the streams wrk left). The Lua script checks every answer in wrk as it completes: status 200, "
        "the chunks' contents joined equal to the upstream's whole text (every chunk, in order; a target may "
        "merge chunks) and `data: [DONE]` last. chunks/s = correct answers * chunks per answer / wrk's "
        "duration; a wrong or incomplete answer is an error, never counted. Answers still in flight when wrk "
        f"stops are not counted either, so a target too slow to complete {MIN_ROUNDS} answers per connection "
        f"in {opts.stream_duration:g} s is measured longer (up to {MAX_SECONDS:g} s; see the seconds column), "
        "and its rate is still a little low. CPU per 1,000 chunks (in ms: also µs per chunk): the "
        "target's utime + stime (its process "
        "and every descendant, from /proc/<pid>/stat) over the measured run, and wrk's own, to show the "
        "client is not the bottleneck (the direct row has no proxy in between).",
        "",
        streamed_table(results),
        "",
        f"Held streams: {held.requested if held else 0:,} streams (`--held-streams`) open at once through one "
        "`patchbay serve` worker "
        "(request log on, `[server] max_connections` above that, `[router] idle_timeout` above the hold), from one "
        "asyncio client on raw sockets (bench/held_streams.py, uvloop, at most "
        f"{OPENING} streams being opened at a time). The upstream's `fake-held` model sends the first chunk and "
        "waits for `POST /control/release`; once every stream has its first chunk and the upstream holds them all "
        "(`GET /control/held`), the server's VmRSS is read from /proc, the streams are released and each must "
        "complete with the whole text and `data: [DONE]`. Idle: the server's VmRSS after a warm-up round of "
        f"{WARMUP} held streams; RSS per stream = (VmRSS all held - idle) / streams; peak: VmHWM at the end. Each "
        "stream takes two descriptors in the server (client and upstream connection), so the count is capped to "
        "what the open-file hard limit leaves.",
        "",
        held_table(held),
        "",
        "Goals (patchbay against the others, same run):",
        "",
        goals_table(table),
        "",
    ]
    if imports:
        lines += [f'`python -c "import patchbay"`: {imports.with_import:.0f} ms; `python -c "pass"`: '
                  f"{imports.bare:.0f} ms (best of the runs each).", ""]
    if chart:
        lines += ["![Throughput and latency per target](gateway.png)", ""]
    lines.append("Versions: " + "; ".join(f"{name} {version or '?'}" for name, version in found_versions.items())
                 + ".")
    return "\n".join(lines)


# --- chart -----------------------------------------------------------------------------------------


SHORT = {"direct": "upstream\n(direct)", "patchbay": "patchbay", "patchbay-nolog": "patchbay\n(log off)",
         "litellm": "LiteLLM", "g4f": "g4f", "nginx": "nginx"}


def _short(key: str) -> str:
    """A target's name, short enough for a chart's axis."""
    return SHORT.get(key, LABELS[key])


def write_chart(results: list[Result], path: Path) -> bool:
    """Throughput, latency and streamed-relay bars (log scales) per measured target; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no chart: matplotlib is not installed (pip install matplotlib, or pip install -e '.[bench]')")
        return False
    measured = [r for r in results if r.measured and r.loaded and r.single and r.stream]
    names = [_short(r.key) for r in measured]
    figure, (left, right, streams) = plt.subplots(1, 3, figsize=(19, 5.4))
    rates = [r.loaded.requests_per_second for r in measured if r.loaded]
    bars = left.bar(names, rates, color="#4477aa")
    left.bar_label(bars, labels=[f"{rate:,.0f}" for rate in rates], fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("requests per second (log scale)")
    left.set_title("Throughput, 50 connections, non-streaming")
    series = {"p50, 50 connections": [r.loaded.p50 for r in measured if r.loaded],
              "p99, 50 connections": [r.loaded.p99 for r in measured if r.loaded],
              "p50, one client": [r.single.p50 for r in measured if r.single],
              "streaming first byte p50": [r.stream.p50 for r in measured if r.stream]}
    width = 0.8 / len(series)
    for index, (label, values) in enumerate(series.items()):
        right.bar([i + (index - (len(series) - 1) / 2) * width for i in range(len(measured))], values, width,
                  label=label)
    right.set_xticks(range(len(measured)), names)
    right.set_yscale("log")
    right.set_ylabel("milliseconds (log scale)")
    right.set_title("Latency")
    right.legend(fontsize=8)
    relayed = [r for r in results if r.streamed]
    rates = [r.streamed.chunks_per_second for r in relayed if r.streamed]
    bars = streams.bar([_short(r.key) for r in relayed], rates, color="#228833")
    streams.bar_label(bars, labels=[f"{rate:,.0f}" for rate in rates], fontsize=8)
    streams.set_yscale("log")
    streams.set_ylabel("relayed chunks per second (log scale)")
    clients = relayed[0].streamed.clients if relayed and relayed[0].streamed else 0
    chunks = relayed[0].streamed.chunks if relayed and relayed[0].streamed else 0
    streams.set_title(f"Streamed relay, {clients} clients, {chunks}-chunk answers")
    for axes in (left, right, streams):
        axes.tick_params(axis="x", labelsize=8)
        axes.grid(axis="y", which="both", alpha=0.3)
    figure.suptitle("Gateways in front of one fake upstream (one worker each, same run)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
