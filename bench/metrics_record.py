"""Metrics benchmark: the cost of one ``GatewayMetrics.record()`` call, hand-written vs prometheus-client.

Three variants in one run: the hand-written counters patchbay had before prometheus-client
(``patchbay/server/metrics.py`` at commit :data:`HAND_WRITTEN`, read with ``git show``), the
prometheus-client version in one process (what a single worker uses), and the same in
multiprocess mode (what ``--workers N`` uses: values in memory-mapped files), measured in a child
process because prometheus-client picks its mode when first imported. Each is the best of
``--repeat`` timeit runs of ``--number`` calls recording a typical streamed answer (time to first
token, tokens, cost). Results go into docs/benchmarks.md (section "metrics").

    python -m bench.metrics_record                 # 7 runs of 200,000 calls each
    python -m bench.metrics_record --no-write      # print only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import timeit
import types
from typing import Any

from bench.measure import ROOT
from bench.report import write_section

SECTION = "metrics"
HAND_WRITTEN = "498c6de58c46861309d861e63d3fc3cab29b725c"
"""The last commit with the hand-written metrics module."""

CALL = "metrics.record('fake', 'fake-small', 200, 0.05, ttft=0.01, prompt_tokens=12, completion_tokens=30, " \
       "key='alice', cost=0.0001)"


def hand_written() -> Any:
    """The hand-written module, loaded from git (it is not on disk any more)."""
    source = subprocess.run(["git", "show", f"{HAND_WRITTEN}:patchbay/server/metrics.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True, timeout=30).stdout
    module = types.ModuleType("hand_written_metrics")
    exec(compile(source, "hand_written_metrics.py", "exec"), module.__dict__)  # patchbay's own file, from git
    return module


def per_call(metrics: Any, number: int, repeat: int) -> float:
    """Nanoseconds per ``record()`` call: the best of ``repeat`` runs."""
    timer = timeit.Timer(CALL, globals={"metrics": metrics})
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def current(number: int, repeat: int) -> float:
    from patchbay.server.metrics import GatewayMetrics, multiprocess_dir

    metrics = GatewayMetrics(100)
    assert (multiprocess_dir() is not None) == ("PROMETHEUS_MULTIPROC_DIR" in os.environ)
    return per_call(metrics, number, repeat)


def multiprocess(number: int, repeat: int) -> float:
    """The prometheus-client version with a multiprocess directory, in a child process."""
    with tempfile.TemporaryDirectory(prefix="patchbay-bench-metrics-") as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        out = subprocess.run([sys.executable, "-m", "bench.metrics_record", "--child", "--number", str(number),
                              "--repeat", str(repeat)], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True, timeout=600).stdout
    return float(json.loads(out)["ns"])


def report(results: dict[str, float], number: int, repeat: int) -> str:
    base, slowest = results["hand-written"], max(results.values())
    rows = "\n".join(f"| {name} | {ns:.0f} | {ns / base:.1f}x |" for name, ns in results.items())
    return f"""## Metrics: the cost of recording one request

`python -m bench.metrics_record` (best of {repeat} timeit runs of {number:,} calls; Python
{platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs). One
`GatewayMetrics.record()` call as the chat endpoint makes it for a streamed answer: requests,
duration and time-to-first-token histograms, prompt and completion tokens, cost. The
hand-written counters are `patchbay/server/metrics.py` at {HAND_WRITTEN[:7]};
prometheus-client {_version()} in one process is what a single worker uses, in multiprocess
mode (values in memory-mapped files) what `--workers N` uses.

| Metrics | ns per call | vs hand-written |
|---|---:|---:|
{rows}

At 1,000 requests a second a worker spends {slowest * 1e-4:.1f}% of one core on this (the slowest
variant above); for it the library gives one `/metrics` summed over every worker, with its
counters, histograms and multiprocess merging in place of hand-written ones.
"""


def _version() -> str:
    from importlib.metadata import version

    return version("prometheus-client")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write docs/benchmarks.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps({"ns": current(args.number, args.repeat)}) + "\n")
        return
    results = {
        "hand-written": per_call(hand_written().GatewayMetrics(100), args.number, args.repeat),
        "prometheus-client, one process": current(args.number, args.repeat),
        "prometheus-client, multiprocess": multiprocess(args.number, args.repeat),
    }
    body = report(results, args.number, args.repeat)
    sys.stdout.write(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
