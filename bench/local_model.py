"""Local provider vs llama-cpp-python called directly: decode speed and time to first token.

Both run in this one process, on the same GGUF file, prompt and settings (greedy, patchbay's
default repeat penalty, same max_tokens), alternating rounds so machine noise hits both alike; medians are compared as
ratios. Goal: decode speed >= 0.95 of direct, and <= 5 ms added to time to first token.

    python bench/local_model.py [--rounds 7] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

from llama_cpp import Llama

from patchbay.providers.local.model import MAX_CONTEXT, PROMPT_CHUNK, Local, Sampling, default_model_path, new_llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MESSAGES = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


@dataclass
class Run:
    ttft: float  # seconds from the call to the first text
    tokens: int  # completion tokens
    decode: float  # seconds from the first text to the last

    @property
    def tokens_per_second(self) -> float:
        return (self.tokens - 1) / self.decode if self.decode > 0 else float("nan")


def direct(llama: Llama, max_tokens: int) -> Run:
    """llama-cpp-python's own streaming chat completion, counted per content chunk."""
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llama.create_chat_completion(messages=MESSAGES, temperature=0, max_tokens=max_tokens, stream=True,
                                              repeat_penalty=Sampling().repeat_penalty):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            first = first or last
            tokens += 1
    return Run(first - started, tokens, last - first)


async def through_patchbay(max_tokens: int) -> Run:
    started = time.perf_counter()
    first = last = 0.0
    stream = Local.stream("", MESSAGES, temperature=0, max_tokens=max_tokens)
    async for _ in stream.text_stream():
        last = time.perf_counter()
        first = first or last
    assert stream.usage is not None
    return Run(first - started, stream.usage.completion_tokens, last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args()

    path = default_model_path()
    # Loaded as patchbay loads it (llama.cpp's extra CPU buffers off: they crash on AMX CPUs).
    llama = new_llama(model_path=str(path), n_ctx=MAX_CONTEXT, n_threads=os.cpu_count(), verbose=False)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(through_patchbay(4))  # load patchbay's model before timing
    direct(llama, 4)

    ours: list[Run] = []
    theirs: list[Run] = []
    for _ in range(args.rounds):
        theirs.append(direct(llama, args.max_tokens))
        ours.append(loop.run_until_complete(through_patchbay(args.max_tokens)))
    loop.close()

    def median(runs: list[Run], key: str) -> float:
        return statistics.median(getattr(r, key) for r in runs)

    tps_direct, tps_ours = median(theirs, "tokens_per_second"), median(ours, "tokens_per_second")
    ttft_direct, ttft_ours = median(theirs, "ttft") * 1000, median(ours, "ttft") * 1000
    ratio = tps_ours / tps_direct
    added = ttft_ours - ttft_direct
    verdict = "met" if ratio >= 0.95 and added <= 5 else "missed"
    body = f"""## Local model: patchbay vs llama-cpp-python directly

Command: `python bench/local_model.py --rounds {args.rounds} --max-tokens {args.max_tokens}`
Model: `{path.name}`, greedy, {os.cpu_count()} threads, context {MAX_CONTEXT}; Python {platform.python_version()},
{platform.machine()}. Medians of {args.rounds} alternating rounds in one process; tokens generated per run:
{theirs[0].tokens} (direct) and {ours[0].tokens} (patchbay).

| path | decode tokens/s | time to first token |
|---|---:|---:|
| llama-cpp-python `create_chat_completion(stream=True)` | {tps_direct:.1f} | {ttft_direct:.1f} ms |
| patchbay `Local.stream()` | {tps_ours:.1f} | {ttft_ours:.1f} ms |
| **ratio / difference** | **{ratio:.3f}x** | **{added:+.1f} ms** |

Goal (decode >= 0.95x direct, first token <= +5 ms): **{verdict}**.

The same prompt is asked every round. llama-cpp-python then reuses its whole cached prompt;
patchbay reuses only whole {PROMPT_CHUNK}-token chunks of it and evaluates the rest again, so that an
answer never depends on what was asked before (llama.cpp's logits change with how a prompt is split
into batches; see "Embedded model sampling" and `LocalModel._evaluate`). That is the added time to
the first token: a few tokens evaluated again per request, a price paid for answers that are the
same whatever came before. A new question, the usual case, is evaluated in full by both.
"""
    print(body)
    if not args.no_write:
        sys.path.insert(0, ROOT)  # run as a script: make the bench package importable
        from bench.report import write_section

        write_section("local-model", body)


if __name__ == "__main__":
    main()
