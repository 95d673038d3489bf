"""Where a gateway request's CPU time goes: py-spy on a live ``patchbay serve``, before and after.

For each source tree (the working tree, and with ``--before REV`` that commit checked out into a
temporary git worktree), one run starts the fake upstream and ``patchbay serve`` (one worker,
request log on), loads it with wrk (streamed: 20 clients, 500-chunk answers; whole: 50
connections), samples it with ``py-spy record`` meanwhile, and reads its CPU time from /proc.
The report has CPU per chunk and per request, and the functions with the most samples of their
own (self time, every line of a function together). It goes into docs/benchmarks.md, section
"gateway-profile".

    python -m bench.gateway_profile --before 0642b71      # before and after, written to docs/
    python -m bench.gateway_profile --no-write            # the working tree only, printed

Needs wrk and py-spy (pip install '.[bench]'); py-spy attaches with ptrace, so run as root or with
ptrace allowed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import ROOT, Unavailable, wrk_command
from bench.report import write_section
from bench.streamed import cpu_spent, parse_streamed, stream_wrk_command, tree_cpu
from bench.targets import Context, Launch, Service, free_port, launch_patchbay

__all__ = ["LAYERS", "Profile", "by_layer", "main", "profile_tree", "self_time"]

log = logging.getLogger("bench.gateway_profile")

CHUNKS = 500  # content chunks per streamed answer
STREAM_CLIENTS = 20
WHOLE_CONNECTIONS = 50
RATE = 250  # py-spy samples per second
IDLE = frozenset({"Condition.wait", "Event.wait", "Thread._wait_for_tstate_lock"})  # waiting, not working


@dataclass
class Profile:
    """One tree's run: CPU per unit of work and the top self-time entries of each load."""

    label: str
    cpu_per_chunk_us: float = 0.0
    chunks_per_s: float = 0.0
    cpu_per_request_us: float = 0.0
    requests_per_s: float = 0.0
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    layers: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def _stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """(frames, samples) per line of py-spy's raw format (``frame;frame;... count``), leaving out
    a thread waiting in ``threading`` (the request log's idle writer: py-spy cannot tell it is idle)."""
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].split(" (")[0] in IDLE:
            continue
        yield frames, int(number)


def self_time(raw: str, top: int) -> list[tuple[str, float]]:
    """The functions with the most samples of their own, with their share of the busy samples."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, number in _stacks(raw):
        leaf = frames[-1]
        name, _, where = leaf.partition(" (")
        module = where.split(":")[0].rsplit("/", 1)[-1]
        counts[f"{name} ({module})" if module else name] += number
        total += number
    return [(name, 100 * n / total) for name, n in counts.most_common(top)] if total else []


#: Where a frame's file belongs: the first layer with a matching fragment (else "other"). py-spy
#: names some files by path ("patchbay/net/pool.py") and others by their base name only
#: ("pool.py"), so both are listed.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "(httptools_impl.py", "(h11_impl.py")),
    ("patchbay.server (ASGI app, SSE writer, limits, metrics)",
     ("patchbay/server/", "prometheus_client/", "(asgi.py", "(app.py", "(writes.py", "(protocol.py", "(metrics.py",
      "(ratelimit.py", "(values.py", "(chat.py")),
    ("patchbay.net (upstream pool, HTTP/1.1, SSE decoding)",
     ("patchbay/net/", "(decoders.py", "(pool.py", "(session.py", "(transport.py", "(timeouts.py")),
    ("rendering (chunks, completions)", ("patchbay/chat/response.py", "patchbay/chat/", "(completions.py",
                                          "(rendering.py")),
    ("providers (OpenAI-compatible parsing, guard, meter)",
     ("patchbay/providers/", "(openai_compatible.py", "(base.py", "(pricing.py")),
    ("routing (router, attempts, state)", ("patchbay/routing/", "(router.py", "(state.py")),
    ("events (EventStream, transcript)", ("patchbay/events.py", "(events.py")),
    ("request log (writer thread)", ("patchbay/requestlog/", "(store.py")),
    ("event loop (asyncio, uvloop)", ("asyncio/", "(runners.py", "(locks.py", "(tasks.py")),
    ("dataclass __init__ (events)", ("(<string>",)),
)


def by_layer(raw: str) -> list[tuple[str, float]]:
    """Self time summed by the layer of the innermost frame whose file is known (see ``LAYERS``)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, number in _stacks(raw):
        layer = next((name for frame in reversed(frames) if " (" in frame
                      for name, fragments in LAYERS if any(fragment in frame for fragment in fragments)), "other")
        counts[layer] += number
        total += number
    return [(name, 100 * n / total) for name, n in counts.most_common()] if total else []


def _sampled(pid: int, seconds: float, out: Path) -> threading.Thread:
    """py-spy recording ``pid`` for ``seconds`` in a thread (started)."""
    cmd = ["py-spy", "record", "-r", str(RATE), "-d", f"{seconds:g}", "-f", "raw", "-o", str(out), "-p", str(pid)]
    thread = threading.Thread(target=subprocess.run, args=(cmd,), daemon=True,
                              kwargs={"capture_output": True, "timeout": seconds + 60, "check": False})
    thread.start()
    return thread


def _load(pid: int, cmd: list[str], seconds: float, samples: Path) -> tuple[str, float]:
    """Run wrk with py-spy attached; wrk's output and the server's CPU seconds meanwhile."""
    before = tree_cpu(pid)
    sampler = _sampled(pid, max(seconds - 1, 1), samples)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 120, check=False)
    after = tree_cpu(pid)
    sampler.join(timeout=60)
    if done.returncode != 0:
        raise Unavailable(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout, cpu_spent(before, after)


def profile_tree(label: str, source: Path, ctx: Context, upstream_pid: int, seconds: float, top: int) -> Profile:
    """Serve from ``source`` (a checkout of the package), load it both ways, profile it."""
    launch = launch_patchbay(ctx, name=f"profile-{label}")
    launch.env = {**(launch.env or {}), "PYTHONPATH": str(source)}
    result = Profile(label)
    with Service(f"patchbay-{label}", launch, ctx.logs) as service:
        url = launch.url
        streamed_cmd = stream_wrk_command(url, STREAM_CLIENTS, seconds, CHUNKS)
        output, cpu = _load(service.pid, streamed_cmd, seconds, ctx.scratch / f"{label}-streamed.txt")
        streamed = parse_streamed(output, STREAM_CLIENTS)
        chunks = streamed.good * streamed.chunks
        result.chunks_per_s = chunks / streamed.seconds if streamed.seconds else 0.0
        result.cpu_per_chunk_us = 1e6 * cpu / chunks if chunks else 0.0
        output, cpu = _load(service.pid, wrk_command(url, WHOLE_CONNECTIONS, seconds), seconds,
                            ctx.scratch / f"{label}-whole.txt")
        requests = int(output.split(" requests in ")[0].split()[-1])
        result.requests_per_s = requests / seconds
        result.cpu_per_request_us = 1e6 * cpu / requests if requests else 0.0
    for load in ("streamed", "whole"):
        samples = ctx.scratch / f"{label}-{load}.txt"
        raw = samples.read_text(encoding="utf-8") if samples.exists() else ""
        result.top[load] = self_time(raw, top)
        result.layers[load] = by_layer(raw)
    return result


@contextlib.contextmanager
def _worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out into a temporary git worktree (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT, check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


def render(profiles: list[Profile], command: str, seconds: float) -> str:
    """The docs/benchmarks.md section."""
    lines = ["## Gateway: where the time goes (py-spy on the live server)", "",
             f"Command: `{command}`. Each tree serves the fake upstream's `fake-long` model ({CHUNKS} chunks, one "
             f"write per SSE event) to `wrk -c{STREAM_CLIENTS}` with bench/wrk/stream.lua, then whole answers to "
             f"`wrk -c{WHOLE_CONNECTIONS}`, {seconds:g} s each, while `py-spy record -r {RATE}` samples it. "
             "CPU is the server's utime + stime from /proc over the same seconds, py-spy's pauses of the process "
             "included (compare the trees with each other; the section above has the unsampled numbers). "
             "Self time: the samples whose innermost frame is in that function, as a share of the server's "
             "busy samples (every thread's; the request log's writer waiting in `Condition.wait` is left "
             "out). By layer: each sample goes to "
             "the layer of its innermost frame in a known file (a library call counts for the layer that made "
             "it).", "",
             "| tree | streamed chunks/s | CPU per chunk | whole req/s | CPU per request |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {p.label} | {p.chunks_per_s:,.0f} | {p.cpu_per_chunk_us:.1f} µs | {p.requests_per_s:,.0f} | "
              f"{p.cpu_per_request_us:.0f} µs |" for p in profiles]
    for load in ("streamed", "whole"):
        names = list(dict.fromkeys(name for p in profiles for name, _ in p.layers.get(load, [])))
        if names:
            header = "| layer | " + " | ".join(p.label for p in profiles) + " |"
            lines += ["", f"Self time by layer, {load}:", "", header, "|---|" + "---:|" * len(profiles)]
            for name in names:
                shares = [dict(p.layers.get(load, [])).get(name) for p in profiles]
                lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.1f}%" for v in shares) + " |")
        lines += ["", f"Top self time, {load}:", "", "| " + " | ".join(p.label for p in profiles) + " |",
                  "|" + "---|" * len(profiles)]
        depth = max((len(p.top.get(load, [])) for p in profiles), default=0)
        for row in range(depth):
            cells = []
            for profile in profiles:
                entries = profile.top.get(load, [])
                cells.append(f"{entries[row][1]:.1f}% `{entries[row][0]}`" if row < len(entries) else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="a git revision to profile too, as the 'before' column")
    parser.add_argument("--seconds", type=float, default=8, help="seconds of each load (default 8)")
    parser.add_argument("--top", type=int, default=15, help="entries per table (default 15)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for tool in ("wrk", "py-spy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (see --help)")
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, contextlib.ExitStack() as stack:
        ctx = Context(free_port(), Path(tmp), Path(tmp), Path(tmp))
        upstream = Launch([sys.executable, "-m", "bench.upstream", "--port", str(ctx.upstream_port)],
                          ctx.upstream_port)
        trees = [(f"before ({args.before})", stack.enter_context(_worktree(args.before)))] if args.before else []
        trees.append(("after (working tree)" if args.before else "working tree", ROOT))
        with Service("upstream", upstream, ctx.logs) as service:
            profiles = [profile_tree(label.split(" ")[0], source, ctx, service.pid, args.seconds, args.top)
                        for label, source in trees]
        for profile, (label, _) in zip(profiles, trees, strict=True):
            profile.label = label
    command = " ".join(["python", "-m", "bench.gateway_profile", *(sys.argv[1:] if argv is None else argv)])
    section = render(profiles, command, args.seconds)
    print(section)
    if not args.no_write:
        write_section("gateway-profile", section)
        log.info("wrote the gateway-profile section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
