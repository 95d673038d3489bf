"""The streamed relay measurement: N concurrent clients reading long streamed answers through a target.

wrk drives it (bench/wrk/stream.lua): ``--stream-clients`` connections, each asking the fake
upstream's long model (bench/upstream.py ``fake-long``) for ``--stream-chunks`` chunks, one after
another for ``--stream-duration`` seconds. The Lua script checks every answer as it completes
(status 200, the whole text in order, ``data: [DONE]`` last) and prints the counts. Chunks per
second are the good answers times the chunks per answer over wrk's duration; an answer that is
wrong or incomplete is an error, never counted. The target's own CPU time (utime + stime of its
process and every descendant, from /proc/<pid>/stat) is read before and after the measured run,
and so is the CPU wrk itself used, to show the client is not the bottleneck.
"""

from __future__ import annotations

import logging
import math
import os
import re
import resource
import shlex
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import HEADERS, ROOT, Unavailable, children_of, parse_wrk
from bench.upstream import LONG_MODEL, long_text

__all__ = [
    "STREAM_LUA", "StreamedResult", "cpu_from_stat", "tree_cpu", "cpu_spent", "parse_stream_check",
    "stream_wrk_command", "parse_streamed", "long_stream_body", "answer_seconds", "run_seconds", "wait_idle",
    "run_streamed",
]

log = logging.getLogger("bench.gateway")  # one logger for the whole benchmark, so its output reads as one

STREAM_LUA = ROOT / "bench" / "wrk" / "stream.lua"
WRK_TIMEOUT = 60.0  # seconds wrk waits for one whole answer before it counts a timeout
MIN_ROUNDS = 5  # answers per client a run should complete, so answers cut off at its end matter little
MAX_SECONDS = 60.0  # the longest a slow target's run is stretched to
IDLE_TIMEOUT = 60.0  # seconds to wait for a target to go idle after the warm-up
IDLE_POLL = 0.5
CHECK_LINE = re.compile(r"^stream-check good=(\d+) bad=(\d+) chunks=(\d+) seconds=([\d.]+) first_bad=(.*)$", re.M)


@dataclass
class StreamedResult:
    """One streamed run: answers checked by the Lua script, wrk's socket errors, CPU seconds spent."""

    clients: int
    chunks: int  # content chunks per answer
    good: int  # answers complete and correct
    bad: int  # answers wrong, incomplete or not 200
    seconds: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    first_bad: str = ""
    target_cpu: float = 0.0  # seconds of CPU the target's processes used during the run
    client_cpu: float = 0.0  # seconds of CPU wrk used
    single_seconds: float = 0.0  # one answer alone, before the run

    @property
    def errors(self) -> int:
        return self.bad + sum(self.socket_errors.values())

    @property
    def answers_per_second(self) -> float:
        return self.good / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_second(self) -> float:
        return self.answers_per_second * self.chunks

    def per_thousand(self, seconds: float) -> float:
        """CPU seconds per 1,000 relayed chunks (NaN when no answer completed)."""
        relayed = self.good * self.chunks
        return seconds / relayed * 1000 if relayed else float("nan")

    @property
    def target_cpu_per_thousand(self) -> float:
        return self.per_thousand(self.target_cpu)

    @property
    def client_cpu_per_thousand(self) -> float:
        return self.per_thousand(self.client_cpu)


# --- CPU time from /proc ----------------------------------------------------------------------------


def cpu_from_stat(text: str, ticks: int) -> float:
    """utime + stime in seconds from the text of a /proc/<pid>/stat (the command may hold spaces and ')')."""
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / ticks  # fields 14 and 15 of proc(5), counted from 1


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of pid and each of its descendants, by pid (processes gone meanwhile are skipped)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    pending = [pid]
    while pending and len(found) < 1000:
        current = pending.pop()
        try:
            found[current] = cpu_from_stat(Path(f"/proc/{current}/stat").read_text(), ticks)
        except (OSError, ValueError, IndexError):
            continue
        pending.extend(child for child in children_of(current) if child not in found)
    return found


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two ``tree_cpu`` readings; a process started meanwhile counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


# --- wrk ---------------------------------------------------------------------------------------------


def stream_wrk_command(url: str, clients: int, seconds: float, chunks: int) -> list[str]:
    """The wrk command line of the streamed run (one thread, the Lua check); also quoted in the report."""
    return ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", f"{WRK_TIMEOUT:g}s",
            "-s", str(STREAM_LUA.relative_to(ROOT)), url, "--", str(chunks)]


def parse_stream_check(output: str) -> tuple[int, int, int, float, str]:
    """(good, bad, chunks per answer, seconds, first problem) from the Lua script's ``stream-check`` line."""
    match = CHECK_LINE.search(output)
    if not match:
        raise ValueError(f"no stream-check line in wrk's output:\n{output}")
    good, bad, chunks, seconds, first_bad = match.groups()
    return int(good), int(bad), int(chunks), float(seconds), first_bad.strip()


def parse_streamed(output: str, clients: int) -> StreamedResult:
    """A ``StreamedResult`` (CPU not yet filled in) from everything wrk printed."""
    good, bad, chunks, seconds, first_bad = parse_stream_check(output)
    try:
        sockets = parse_wrk(output, clients).socket_errors
    except ValueError:  # no throughput line: nothing completed at all
        sockets = {}
    return StreamedResult(clients, chunks, good, bad, seconds, sockets, first_bad)


def _wrk(cmd: list[str], seconds: float) -> tuple[str, float]:
    """Run wrk once; what it printed and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + WRK_TIMEOUT + 60,
                          check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise Unavailable(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def long_stream_body(chunks: int) -> bytes:
    """The streamed request bench/wrk/stream.lua sends (the same bytes), for the one-answer probe."""
    return (b'{"model":"%s","messages":[{"role":"user","content":"Say hello"}],"stream":true,"max_tokens":%d}'
            % (LONG_MODEL.encode(), chunks))


def answer_seconds(url: str, chunks: int, timeout: float = WRK_TIMEOUT) -> float:
    """Seconds one streamed answer takes alone (read to the end and checked); also warms the target up."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    request = urllib.request.Request(url, data=long_stream_body(chunks), headers=HEADERS, method="POST")
    started = time.perf_counter()
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read().decode("utf-8", "replace")
    except OSError as exc:
        raise Unavailable(f"the streamed probe failed: {exc}") from exc
    elapsed = time.perf_counter() - started
    text = "".join(re.findall(r'"content"\s*:\s*"([^"]*)"', body))
    if text != long_text(chunks) or not body.rstrip().endswith("data: [DONE]"):
        raise Unavailable(f"the streamed probe's answer is wrong: {len(text)} of {len(long_text(chunks))} "
                          f"characters, ends with {body[-60:]!r}")
    return elapsed


def run_seconds(base: float, single: float, clients: int) -> float:
    """How long to measure: ``base``, or longer (up to MAX_SECONDS) for a target so slow that fewer than
    MIN_ROUNDS answers per client would complete in ``base`` (``single``: one answer's time alone; a
    target busy on one core takes about ``clients`` times as long with every client at once)."""
    return max(base, min(MAX_SECONDS, float(math.ceil(MIN_ROUNDS * clients * single))))  # wrk: whole seconds


def wait_idle(pid: int, timeout: float = IDLE_TIMEOUT) -> float:
    """Poll (bounded) until the target's processes use under a tenth of a core: a warm-up's streams
    that wrk abandoned may still be relayed. The seconds waited."""
    started = time.monotonic()
    last = tree_cpu(pid)
    while time.monotonic() - started < timeout:
        time.sleep(IDLE_POLL)  # the interval the CPU use is measured over
        now = tree_cpu(pid)
        if cpu_spent(last, now) < 0.1 * IDLE_POLL:
            break
        last = now
    return time.monotonic() - started


def run_streamed(url: str, pid: int, clients: int, chunks: int, seconds: float, warmup: float) -> StreamedResult:
    """One answer alone (checked; its time sizes the run), a short warm-up run, a wait until the target is
    idle, then the measured run with the target's CPU read before and after."""
    single = answer_seconds(url, chunks)
    _wrk(stream_wrk_command(url, clients, warmup, chunks), warmup)
    waited = wait_idle(pid)
    duration = run_seconds(seconds, single, clients)
    if duration > seconds:
        log.info("  one answer alone takes %.2f s: measuring %.0f s instead of %g s", single, duration, seconds)
    if waited > 3 * IDLE_POLL:
        log.info("  the target was busy %.1f s after the warm-up (streams wrk left)", waited)
    cmd = stream_wrk_command(url, clients, duration, chunks)
    log.info("  %s", shlex.join(cmd))
    before = tree_cpu(pid)
    output, client_cpu = _wrk(cmd, duration)
    after = tree_cpu(pid)
    result = parse_streamed(output, clients)
    result.target_cpu = cpu_spent(before, after)
    result.client_cpu = client_cpu
    result.single_seconds = single
    if result.chunks != chunks:
        raise Unavailable(f"the Lua script used {result.chunks} chunks per answer, not {chunks}")
    return result
