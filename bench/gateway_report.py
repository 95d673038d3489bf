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
from bench.targets import LABELS, Context, nginx_version, package_version, peer_python

__all__ = [
    "CHART", "Goal", "goals", "versions", "machine", "ms", "error_cell", "results_table", "goals_table", "render",
    "write_chart",
]

log = logging.getLogger("bench.gateway")  # one logger for the whole benchmark, so its output reads as one

CHART = ROOT / "docs" / "gateway.png"


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


def goals(results: dict[str, Result], imports: ImportTime | None) -> list[Goal]:
    """The issue's goals, all computed from this run."""
    patchbay, direct = results.get("patchbay"), results.get("direct")
    table = [throughput_goal(patchbay, peer, results.get(peer), minimum)
             for peer, minimum in (("g4f", 10), ("litellm", 25), ("nginx", 0.5))]
    table.append(added_goal("one client p50, added over direct", patchbay, direct,
                            lambda r: r.single.p50 if r.single else float("nan"), 0.5))
    table.append(added_goal("streaming first byte p50, added over direct", patchbay, direct,
                            lambda r: r.stream.p50 if r.stream else float("nan"), 1.0))
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


def goals_table(table: list[Goal]) -> str:
    """The goals as a markdown table."""
    rows = ["| goal | patchbay | target | result |", "|---|---:|---:|---|"]
    rows += [f"| {g.name} | {g.value} | {g.target} | {g.status} |" for g in table]
    return "\n".join(rows)


def render(command: str, opts: Options, results: list[Result], table: list[Goal], imports: ImportTime | None,
           found_versions: dict[str, str], chart: bool, load: float) -> str:
    """The whole docs/benchmarks.md section."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
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
        "patchbay checks the client's key (`PATCHBAY_API_KEYS`) as LiteLLM checks its master key.",
        "",
        results_table(results),
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


def write_chart(results: list[Result], path: Path) -> bool:
    """Throughput bars and latency bars (log scales) per measured target; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("no chart: matplotlib is not installed (pip install matplotlib, or pip install -e '.[bench]')")
        return False
    measured = [r for r in results if r.measured and r.loaded and r.single and r.stream]
    names = [LABELS[r.key].replace(" (keep-alive)", "").replace(", direct", "\n(direct)") for r in measured]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
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
    for axes in (left, right):
        axes.tick_params(axis="x", labelsize=8)
        axes.grid(axis="y", which="both", alpha=0.3)
    figure.suptitle("Gateways in front of one fake upstream (one worker each, same run)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
