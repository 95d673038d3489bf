"""How patchbay's server stack was chosen: each candidate measured in one run.

    python -m bench.server_stack [--duration 5]

1. The ASGI server, with an app that only parses the body and answers a fixed JSON
   (:func:`bench.stack_apps.static`): uvicorn (httptools, uvloop) against granian, when installed.
2. The upstream client, with an app that forwards to the fixed fake upstream: one shared aiohttp
   ClientSession against patchbay's keep-alive pool (:mod:`patchbay.net.pool`).
3. JSON and validation of a chat request body, in-process: ``json.loads`` alone, pydantic's
   ``model_validate_json`` of an equivalent model, and msgspec decoding into
   :class:`patchbay.completions.ChatCompletionRequest` (parsing and checking in one step).

Throughput is wrk's (50 connections), so the numbers are comparable only within one run.
Writes the "server-stack" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from bench.measure import run_wrk
from bench.report import write_section
from bench.targets import Launch, Service, free_port

log = logging.getLogger("bench.server_stack")

BODY = b'{"model":"fake","messages":[{"role":"user","content":"Say hello"}],"temperature":0.5}'


def _uvicorn(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"bench.stack_apps:{app}", "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]


def _granian(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--no-ws", f"bench.stack_apps:{app}"]


def servers(upstream: str) -> list[tuple[str, Callable[[str, int], list[str]], str]]:
    """(label, command builder, app) for every candidate that is installed."""
    rows = [("uvicorn + static app", _uvicorn, "static")]
    if importlib.util.find_spec("granian") is not None:
        rows.append(("granian + static app", _granian, "static"))
    rows += [("uvicorn + forward, aiohttp ClientSession", _uvicorn, "forward_aiohttp"),
             ("uvicorn + forward, patchbay ConnectionPool", _uvicorn, "forward_pool")]
    return rows


def measure_servers(duration: float, scratch: Path) -> list[tuple[str, float, float]]:
    """(label, req/s, p50 ms) for the upstream alone and each candidate."""
    results = []
    upstream_port = free_port()
    upstream = Launch([sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)], upstream_port)
    with Service("upstream", upstream, scratch):
        direct = run_wrk(upstream.url, 50, duration)
        results.append(("fake upstream, direct", direct.requests_per_second, direct.p50))
        env = {"STACK_UPSTREAM": f"http://127.0.0.1:{upstream_port}"}
        for label, command, app in servers(env["STACK_UPSTREAM"]):
            port = free_port()
            launch = Launch(command(app, port), port, env=env)
            with Service(app, launch, scratch):
                run_wrk(launch.url, 50, 1)  # warm-up
                result = run_wrk(launch.url, 50, duration)
            results.append((label, result.requests_per_second, result.p50))
    return results


def measure_json(rounds: int = 20_000) -> list[tuple[str, float]]:
    """(label, microseconds per body) for each way of reading a request body."""
    from patchbay.chat.request import decode_request

    rows = [("json.loads (no checks)", lambda: json.loads(BODY)),
            ("msgspec into ChatCompletionRequest (parse + validate)", lambda: decode_request(BODY))]
    try:
        from typing import Annotated, Literal

        import pydantic

        class Message(pydantic.BaseModel):
            role: Literal["system", "developer", "user", "assistant", "tool"]
            content: str | list[dict[str, object]] | None = None

        class Request(pydantic.BaseModel):
            model: str
            messages: list[Message]
            temperature: Annotated[float, pydantic.Field(ge=0, le=2)] | None = None

        rows.insert(1, (f"pydantic {pydantic.VERSION} model_validate_json (parse + validate)",
                        lambda: Request.model_validate_json(BODY)))
    except ImportError:
        pass
    return [(label, min(timeit.repeat(run, number=rounds, repeat=3)) / rounds * 1e6) for label, run in rows]


def report(servers_rows: list[tuple[str, float, float]], json_rows: list[tuple[str, float]], duration: float) -> str:
    lines = ["## Server stack: how it was chosen", "",
             f"Command: `python -m bench.server_stack --duration {duration:g}`. Each server runs alone, one worker, "
             "in front of the fixed fake upstream (`bench/upstream.py`); "
             f"wrk `-t1 -c50 -d{duration:g}s`. The apps are in `bench/stack_apps.py`.", "",
             "| server stack | req/s | p50 |", "|---|---:|---:|"]
    lines += [f"| {label} | {rate:,.0f} | {p50:.2f} ms |" for label, rate, p50 in servers_rows]
    lines += ["", "| reading a chat request body | µs per body |", "|---|---:|"]
    lines += [f"| {label} | {micros:.2f} |" for label, micros in json_rows]
    lines += ["", "Chosen: uvicorn with httptools and uvloop. Granian and uvicorn trade places from run to run "
              "with the trivial app (within about 20%), and either server's own cost per request is small next "
              "to the gateway's (compare the static row with `patchbay serve` in the gateway section), and uvicorn "
              "is plain Python ASGI with multi-worker support. For upstream requests, patchbay's own "
              "keep-alive pool: the aiohttp session caps a forwarding app below it. For bodies, msgspec: it "
              "parses and validates in one step faster than `json.loads` parses alone, and the JSON Schema "
              "of /openapi.json comes from the same type."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per candidate")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="patchbay-stack-") as scratch:
        servers_rows = measure_servers(args.duration, Path(scratch))
    text = report(servers_rows, measure_json(), args.duration)
    print(text)
    if not args.no_write:
        write_section("server-stack", text)


if __name__ == "__main__":
    main()
