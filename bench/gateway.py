"""Gateway benchmark: patchbay serve vs LiteLLM, g4f and nginx, all in front of one fake upstream.

One run measures, one target at a time (each alone on the machine, one worker each), in front of
the same fixed upstream (bench/upstream.py):

1. the upstream directly;
2. ``patchbay serve`` with its request log on (the default);
3. ``patchbay serve --no-log`` (request log off);
4. the LiteLLM proxy (pinned, installed into bench/.peers/litellm on first run);
5. the g4f API server (pinned, installed into bench/.peers/g4f on first run);
6. nginx ``proxy_pass`` with upstream keep-alive: the ceiling for one extra hop.

Per target: throughput and p50/p99 latency under 50 connections (wrk), single-client latency
(wrk, one connection), streaming time to the first SSE ``data:`` line (N sequential requests
on one keep-alive connection), the streamed relay (wrk with bench/wrk/stream.lua: --stream-clients
concurrent clients reading --stream-chunks-chunk answers, each checked; chunks/s and the target's CPU
seconds per 1,000 chunks from /proc) and peak RSS. Then, when patchbay is measured, --held-streams
concurrent open streams through one patchbay worker (bench/held_streams.py): its peak RSS and RSS per
stream, and every stream must complete. Ratios against the goals are computed from the same run.
Results go into docs/benchmarks.md (section "gateway") and docs/gateway.png.

    python -m bench.gateway                                   # the full run
    python -m bench.gateway --duration 3 --only patchbay,nginx   # a quick look (--only: docs/ untouched)
    python -m bench.gateway --only direct,patchbay,nginx --duration 2 --single-duration 1 --streams 50 \\
        --stream-duration 3 --held-streams 2000 --no-write       # every measurement, briefly

Needs wrk and nginx on PATH; the chart needs matplotlib (pip install matplotlib, or '.[bench]').
"""

# This module is the command line and the run loop; the docstring above is also its --help text.
# The rest lives next to it: bench/targets.py (installing, starting and stopping each target),
# bench/measure.py (wrk, streaming first byte, peak RSS, import time), bench/streamed.py (the streamed
# relay run), bench/held_streams.py (many open streams) and bench/gateway_report.py (goals, tables, the
# docs/benchmarks.md section and the chart).

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from bench.gateway_report import (
    CHART,
    goals,
    goals_table,
    held_table,
    render,
    results_table,
    streamed_table,
    versions,
    write_chart,
)
from bench.held_streams import HeldResult, run_held
from bench.measure import ImportTime, Options, Result, Unavailable, measure_import, measure_target
from bench.report import write_section
from bench.targets import LAUNCHERS, PEERS, TARGETS, Context, Launch, Service, free_port, package_version
from bench.upstream import raise_fd_limit

__all__ = ["bench_target", "bench_held", "main", "options", "parse_args", "run"]

log = logging.getLogger("bench.gateway")  # one logger for the whole benchmark, so its output reads as one


# --- one target --------------------------------------------------------------------------------


def bench_target(key: str, ctx: Context, upstream: Service, opts: Options) -> Result:
    """Start the target alone, measure it, stop it; an unavailable target becomes a noted row."""
    if key == "direct":
        version = f"aiohttp {package_version(sys.executable, 'aiohttp')}"
        return measure_target(key, upstream.launch.url, upstream.pid, opts, version)
    try:
        launch = LAUNCHERS[key](ctx)
        with Service(key, launch, ctx.logs) as service:
            return measure_target(key, launch.url, service.pid, opts, launch.version)
    except Unavailable as exc:
        log.warning("%s: not available: %s", key, exc)
        return Result(key, unavailable=" ".join(str(exc).split())[:200] or "failed")


def bench_held(ctx: Context, streams: int) -> HeldResult:
    """The held-streams run through its own patchbay serve; an unavailable server becomes a noted result."""
    try:
        return run_held(ctx, streams)
    except (Unavailable, OSError, ValueError) as exc:
        log.warning("held streams: not measured: %s", exc)
        return HeldResult(streams, unavailable=" ".join(str(exc).split())[:200] or "failed")


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options (see --help); ``targets`` is the checked list --only selects (all by default)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of wrk under load (default 10)")
    parser.add_argument("--single-duration", type=float, default=5, help="seconds of wrk with one client")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections under load (default 50)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of wrk before measuring (default 1)")
    parser.add_argument("--streams", type=int, default=300, help="streaming requests per target (default 300)")
    parser.add_argument("--stream-clients", type=int, default=20,
                        help="concurrent clients of the streamed relay run (default 20)")
    parser.add_argument("--stream-chunks", type=int, default=500,
                        help="content chunks per streamed answer (default 500)")
    parser.add_argument("--stream-duration", type=float, default=10,
                        help="seconds of the streamed relay run per target (default 10; 0 skips it)")
    parser.add_argument("--held-streams", type=int, default=10_000,
                        help="concurrent held streams through one patchbay worker (default 10000; 0 skips)")
    parser.add_argument("--import-runs", type=int, default=10, help="runs of `import patchbay` (best kept)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(TARGETS)}; "
                                                   "implies --no-write")
    parser.add_argument("--peers", type=Path, default=PEERS, help="where the peers' virtualenvs live")
    parser.add_argument("--logs", type=Path, help="keep each process's output in this folder (default: discarded)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.only.split(",") if t.strip()] or list(TARGETS)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {','.join(TARGETS)}")
    if args.duration <= 0 or args.single_duration <= 0 or args.warmup <= 0 or args.streams < 1 \
            or args.connections < 1 or args.import_runs < 1 or args.stream_clients < 1 or args.stream_chunks < 1:
        parser.error("durations, connections, clients, chunks, streams and runs must be positive")
    if args.stream_duration < 0 or args.held_streams < 0:
        parser.error("--stream-duration and --held-streams must be 0 (skip) or more")
    return args


def options(args: argparse.Namespace) -> Options:
    """The per-target measurement options from the command line."""
    return Options(args.duration, args.single_duration, args.connections, args.warmup, args.streams,
                   args.stream_clients, args.stream_chunks, args.stream_duration)


def run(args: argparse.Namespace) -> tuple[list[Result], ImportTime | None, dict[str, str], HeldResult | None]:
    """Measure import time, then start the upstream and bench each selected target in turn, then the
    held streams (when patchbay is selected)."""
    opts = options(args)
    imports = measure_import(args.import_runs) if "patchbay" in args.targets else None
    raise_fd_limit()  # the upstream and the servers inherit it; the held streams need many descriptors
    held = None
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        ctx = Context(free_port(), Path(tmp), args.peers.resolve(), (args.logs or Path(tmp)).resolve())
        ctx.peers.mkdir(parents=True, exist_ok=True)
        ctx.logs.mkdir(parents=True, exist_ok=True)
        upstream = Launch([sys.executable, "-m", "bench.upstream", "--port", str(ctx.upstream_port),
                           "--long-chunks", str(args.stream_chunks)], ctx.upstream_port)
        with Service("upstream", upstream, ctx.logs) as service:
            results = [bench_target(key, ctx, service, opts) for key in args.targets]
            if args.held_streams and "patchbay" in args.targets:
                log.info("held streams: %d through one patchbay serve worker", args.held_streams)
                held = bench_held(ctx, args.held_streams)
        return results, imports, versions(ctx, results), held


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark, print the tables; write docs/ only for a full run (no --only, no --no-write)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    load = os.getloadavg()[0]
    if load > 0.5:
        log.warning("load average %.2f: something else is running; the numbers will be noisier", load)
    results, imports, found_versions, held = run(args)
    by_key = {r.key: r for r in results}
    table = goals(by_key, imports, held)
    write = not (args.no_write or args.only)
    chart = write_chart(results, CHART) if write else False
    section = render(shlex.join(["python", "-m", "bench.gateway", *argv]), options(args), results, table, imports,
                     found_versions, chart, load, held)
    print(results_table(results), streamed_table(results), held_table(held), goals_table(table), sep="\n\n")
    if write:
        write_section("gateway", section)
        log.info("wrote the gateway section of docs/benchmarks.md%s", " and docs/gateway.png" if chart else "")
    else:
        log.info("not writing docs/ (--no-write or --only)")


if __name__ == "__main__":
    main()
