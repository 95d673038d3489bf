"""Request-log benchmark: ``patchbay serve`` throughput with the request log on and off, same run.

Two ``patchbay serve`` processes (one worker each) front the same fixed upstream
(bench/upstream.py): one records every exchange in its request log (the default), the other runs
with ``--no-log``. wrk loads them in turn, alternating which goes first in each round so drift
(other load, CPU frequency) falls on both. The logging server's database is then counted, to show
it really recorded every request. Results go into docs/benchmarks.md (section "request-log").

    python -m bench.request_log                       # 3 rounds of 8 s per server
    python -m bench.request_log --rounds 1 --duration 3 --no-write   # a quick look

Needs wrk on PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import API_KEY, ROOT, WrkResult, run_wrk
from bench.report import write_section
from bench.targets import Launch, Service, free_port

log = logging.getLogger("bench.request_log")

SECTION = "request-log"


@dataclass
class Target:
    """One server under test and the wrk runs it got."""

    name: str
    service: Service
    runs: list[WrkResult] = field(default_factory=list)
    main_cpu: float = 0.0  # seconds of CPU during the measured runs: the event loop's thread
    other_cpu: float = 0.0  # and every other thread (the request log's writer)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.runs)

    @property
    def requests(self) -> int:
        return sum(run.requests for run in self.runs)

    @property
    def errors(self) -> int:
        return sum(run.errors for run in self.runs)

    def microseconds(self, seconds: float) -> float:
        """CPU seconds per measured request, in microseconds."""
        return seconds / self.requests * 1e6


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            found[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def measured(target: Target, args: argparse.Namespace) -> WrkResult:
    """One wrk run against ``target``, with the CPU its server's threads spent meanwhile."""
    pid = target.service.pid
    before = thread_cpu(pid)
    result = run_wrk(target.service.launch.url, args.connections, args.duration)
    after = thread_cpu(pid)
    for tid, seconds in after.items():
        spent = seconds - before.get(tid, 0.0)
        if tid == pid:
            target.main_cpu += spent
        else:
            target.other_cpu += spent
    return result


def upstream_service(scratch: Path) -> Service:
    """The fixed fake upstream (bench/upstream.py) on a free port; its output goes to scratch."""
    port = free_port()
    return Service("upstream", Launch([sys.executable, "-m", "bench.upstream", "--port", str(port)], port), scratch)


def serve(scratch: Path, upstream: int, *, logging_on: bool, models: Sequence[str] = ("fake",)) -> Launch:
    """``patchbay serve`` routing each of ``models`` to the same model of the upstream, with its own
    PATCHBAY_HOME (scratch/on or scratch/off)."""
    home = scratch / ("on" if logging_on else "off")
    home.mkdir()
    config = home / "patchbay.toml"
    routes = "".join(f'{model} = ["upstream/{model}"]\n' for model in models)
    config.write_text(f'[providers.upstream]\nbase_url = "http://127.0.0.1:{upstream}/v1"\n'
                      f'models = {json.dumps(list(models))}\n\n[routes]\n{routes}', encoding="utf-8")
    port = free_port()
    cmd = [sys.executable, "-m", "patchbay", "serve", "--config", str(config), "--port", str(port),
           "--workers", "1", "--log-level", "warning"]
    if not logging_on:
        cmd.append("--no-log")
    return Launch(cmd, port, {"PATCHBAY_HOME": str(home), "PATCHBAY_API_KEYS": API_KEY})


def logged_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM exchanges").fetchone()[0])


def report(off: Target, on: Target, rows: int, dropped: bool, args: argparse.Namespace) -> str:
    ratio = on.median("requests_per_second") / off.median("requests_per_second")
    command = f"python -m bench.request_log --rounds {args.rounds} --duration {args.duration:g}"
    lines = [
        "## Request log: server throughput with and without logging",
        "",
        f"Command: `{command}`",
        f"`patchbay serve` (one worker) in front of bench/upstream.py; `wrk -t1 -c{args.connections} "
        f"-d{args.duration:g}s -s bench/wrk/post.lua` (a small non-streaming chat completion); "
        f"{args.rounds} rounds, each server loaded in turn, the order alternating. Python "
        f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs shared by wrk, the "
        "server and the upstream.",
        "",
        f"| request log | requests/s (median of {args.rounds}) | p50 latency | p99 latency | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for target in (off, on):
        lines.append(f"| {target.name} | {target.median('requests_per_second'):,.0f} | "
                     f"{target.median('p50'):.2f} ms | {target.median('p99'):.2f} ms | {target.errors} |")
    lines += [
        f"| **on / off** | **{ratio:.3f}x** | | | |",
        "",
        "Where the difference goes, in the server's CPU per request (from /proc, during the measured "
        "runs):",
        "",
        "| request log | event loop thread | other threads (the log's writer) |",
        "|---|---:|---:|",
    ]
    for target in (off, on):
        lines.append(f"| {target.name} | {target.microseconds(target.main_cpu):.0f} µs | "
                     f"{target.microseconds(target.other_cpu):.1f} µs |")
    lines += [
        "",
        "Recording itself costs the request path one msgspec encode and an append to the writer's "
        "backlog (measured separately, building the record with the writer switched off gave 0.99x). "
        "The rest is the "
        "writer thread: its own work (decoding, the redaction scan, multi-row INSERTs), and the event "
        "loop's thread running slower while it shares the GIL and the CPU caches with it. All of it is "
        "on the same CPUs that wrk, the upstream and the server already keep busy, so here it shows "
        "as throughput.",
        "",
        f"The logging server wrote {rows:,} rows for the {on.requests:,} requests wrk counted as completed "
        "(plus readiness probes, warm-up and requests still in flight when a run ended); "
        + ("it dropped records (queue full)." if dropped else "it dropped none."),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before the measured runs")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/ alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench-requestlog-") as directory:
        scratch = Path(directory)
        upstream = upstream_service(scratch)
        upstream_port = upstream.launch.port
        with upstream:
            off = Target("off (`--no-log`)", Service("patchbay-nolog", serve(scratch, upstream_port,
                                                                            logging_on=False), scratch))
            on = Target("on (default)", Service("patchbay-log", serve(scratch, upstream_port, logging_on=True),
                                                scratch))
            with off.service, on.service:
                for target in (off, on):
                    run_wrk(target.service.launch.url, args.connections, args.warmup)
                for round_number in range(args.rounds):
                    order = (off, on) if round_number % 2 == 0 else (on, off)
                    for target in order:
                        result = measured(target, args)
                        log.info("  %s: %.0f requests/s", target.name, result.requests_per_second)
                        target.runs.append(result)
            # Both stopped (SIGTERM): the logging server has written what it had queued.
            rows = logged_rows(scratch / "on" / "logs.db")
            dropped = "cannot keep up" in on.service.log_path.read_text(encoding="utf-8", errors="replace")
    body = report(off, on, rows, dropped, args)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
        log.info("wrote section %r of %s", SECTION, ROOT / "docs" / "benchmarks.md")


if __name__ == "__main__":
    main()
