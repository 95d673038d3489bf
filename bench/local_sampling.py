"""Embedded model sampling: which default settings answer short factual questions best.

Asks the embedded model (SmolLM2-135M-Instruct) a fixed set of short factual questions with
known answers, through ``Local.stream`` as real use does (the prompt evaluated as patchbay always does,
no system message unless a setting names one), over a small grid of sampling settings and a
few seeds (greedy settings are deterministic and run once). An answer is correct when it
contains one of the question's accepted words (case-insensitive, whole words). It also counts
answers that loop (end in one phrase repeated 3 or more times), answers that reached
max_tokens, and answers the repeat guard ended. The table goes into docs/benchmarks.md,
section "Embedded model sampling"; the best setting is what ``Sampling`` uses by default.

    python -m bench.local_sampling [--seeds 3] [--max-tokens 48] [--show] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import re
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchbay.providers.local.model import DEFAULT_MODEL, Local, Sampling

__all__ = ["QUESTIONS", "SETTINGS", "Question", "Setting", "Tally", "cpu", "is_correct", "loops", "main",
           "periodic_tail", "report", "run_setting"]

OLD_SYSTEM_PROMPT = "You are a helpful assistant."  # what patchbay injected before this benchmark


@dataclass(frozen=True)
class Question:
    text: str
    accepted: tuple[str, ...]  # any one of these, as a whole word, makes the answer correct


QUESTIONS: tuple[Question, ...] = (
    Question("What is the capital of France?", ("paris",)),
    Question("What is the capital of Japan?", ("tokyo",)),
    Question("What is the capital of Italy?", ("rome",)),
    Question("What is the capital of Germany?", ("berlin",)),
    Question("What is the capital of Spain?", ("madrid",)),
    Question("How many days are there in a week?", ("seven", "7")),
    Question("How many legs does a spider have?", ("eight", "8")),
    Question("What is 2 + 2?", ("four", "4")),
    Question("What color is the sky on a clear day?", ("blue",)),
    Question("What is the largest planet in the solar system?", ("jupiter",)),
    Question("Which planet is known as the Red Planet?", ("mars",)),
    Question("Who wrote the play Romeo and Juliet?", ("shakespeare",)),
    Question("What is the chemical formula of water?", ("h2o", "h₂o")),
    Question("At how many degrees Celsius does water freeze?", ("0", "zero")),
    Question("At how many degrees Celsius does water boil at sea level?", ("100", "one hundred")),
    Question("How many continents are there on Earth?", ("seven", "7")),
    Question("What is the largest ocean on Earth?", ("pacific",)),
    Question("Which gas do plants take in from the air for photosynthesis?", ("carbon dioxide", "co2")),
    Question("What is the opposite of hot?", ("cold",)),
    Question("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    Question("What language is mainly spoken in Brazil?", ("portuguese",)),
    Question("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    Question("What is the tallest mountain in the world?", ("everest",)),
    Question("Which animal is called the king of the jungle?", ("lion", "lions")),
)


@dataclass(frozen=True)
class Setting:
    temperature: float
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    system: str | None = None  # a system message; None: the chat template's own default

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def label(self) -> str:
        parts = ["greedy" if self.greedy else f"temperature {self.temperature:g}"]
        if not self.greedy:
            parts += [f"top_p {self.top_p:g}", f"min_p {self.min_p:g}"]
        parts.append(f"repeat_penalty {self.repeat_penalty:g}")
        if self.system is not None:
            parts.append(f'system "{self.system}"')
        return ", ".join(parts)

    def options(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "min_p": self.min_p,
                "repeat_penalty": self.repeat_penalty}

    def is_default(self) -> bool:
        default = Sampling()
        same = (self.temperature == default.temperature and self.repeat_penalty == default.repeat_penalty
                and (self.greedy or (self.top_p, self.min_p) == (default.top_p, default.min_p)))
        return self.system is None and same


#: Rows within this share of the most correct one are a tie (a little over one answer in 24).
TIE = 0.05

SETTINGS: tuple[Setting, ...] = (
    Setting(0.8, top_p=0.95, min_p=0.05, system=OLD_SYSTEM_PROMPT),  # patchbay before this benchmark
    Setting(0.8, top_p=0.95, min_p=0.05),
    Setting(0.2, min_p=0.1, repeat_penalty=1.2),
    Setting(0.3, min_p=0.1, repeat_penalty=1.2),
    Setting(0.5, min_p=0.1, repeat_penalty=1.2),
    Setting(0.0),
    Setting(0.0, repeat_penalty=1.1),
    Setting(0.0, repeat_penalty=1.2),
    Setting(0.0, repeat_penalty=1.3),
    Setting(0.0, repeat_penalty=1.2, system=OLD_SYSTEM_PROMPT),
)


def periodic_tail(items: Sequence[Hashable], max_period: int = 64) -> tuple[int, int]:
    """The longest tail of ``items`` made of one block repeated back to back: (period, span).

    ``span`` counts the items of the tail (the block at least twice, a last copy possibly
    partial); ``(0, 0)`` when no tail repeats. Of equal spans the shorter period wins.
    """
    best = (0, 0)
    n = len(items)
    for period in range(1, min(max_period, n // 2) + 1):
        run = 0
        while run < n - period and items[n - 1 - run] == items[n - 1 - run - period]:
            run += 1
        span = run + period
        if span >= 2 * period and span > best[1]:
            best = (period, span)
    return best


def is_correct(answer: str, accepted: Sequence[str]) -> bool:
    """Whether ``answer`` contains one of ``accepted`` as whole words, ignoring case (a number
    inside another, as 7 in 129.7 or 4 in 24, does not count)."""
    return any(re.search(rf"(?<![\w.,]){re.escape(word)}(?!\w|[.,]\d)", answer, re.IGNORECASE)
               for word in accepted)


def loops(answer: str) -> bool:
    """Whether the answer ends in one phrase repeated at least 3 times (words and punctuation)."""
    words = re.findall(r"\w+|[^\w\s]", answer.lower())
    period, span = periodic_tail(words)
    return period > 0 and span >= 3 * period and span >= 6


@dataclass
class Tally:
    runs: int = 0
    correct: int = 0
    looped: int = 0
    at_limit: int = 0  # reached max_tokens
    guarded: int = 0  # ended by the repeat guard
    seconds: float = 0.0
    answers: list[tuple[str, str, bool]] = field(default_factory=list)  # (question, answer, correct)


async def ask(question: Question, setting: Setting, seed: int, max_tokens: int) -> tuple[str, str | None]:
    """One answer through the normal code path: (text, finish reason)."""
    messages = [{"role": "user", "content": question.text}]
    if setting.system is not None:
        messages.insert(0, {"role": "system", "content": setting.system})
    stream = Local.stream("", messages, max_tokens=max_tokens, seed=seed, **setting.options())
    text = await stream.collect()
    return text, stream.finish_reason


async def run_setting(setting: Setting, seeds: Sequence[int], max_tokens: int,
                      questions: Sequence[Question] = QUESTIONS) -> Tally:
    """Every question under ``setting``, once per seed (once in all when greedy)."""
    model = Local.model_for(DEFAULT_MODEL)
    tally = Tally()
    started = time.perf_counter()
    for seed in seeds[:1] if setting.greedy else seeds:
        for question in questions:
            guarded = model.loops_ended
            text, reason = await ask(question, setting, seed, max_tokens)
            right = is_correct(text, question.accepted)
            tally.runs += 1
            tally.correct += right
            tally.looped += loops(text)
            tally.at_limit += reason == "length"
            tally.guarded += model.loops_ended - guarded
            tally.answers.append((question.text, text, right))
    tally.seconds = time.perf_counter() - started
    return tally


def cpu() -> str:
    """The CPU's model name and whether it has AVX-512 (which changes llama.cpp's kernels)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vector = "AVX-512 (avx512f)" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{name}, {vector}"


def report(results: list[tuple[Setting, Tally]], args: argparse.Namespace) -> str:
    ranked = sorted(results, key=lambda r: (r[1].correct / r[1].runs, -r[1].looped / r[1].runs,
                                            -r[1].at_limit / r[1].runs), reverse=True)
    tied = [r for r in ranked if r[1].correct / r[1].runs >= ranked[0][1].correct / ranked[0][1].runs - TIE]
    best = min(tied, key=lambda r: (r[0].greedy, r[1].looped / r[1].runs, -r[1].correct / r[1].runs))
    second = next((r for r in ranked if r is not best), best)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    default = Sampling()
    rows = "\n".join(
        f"| {setting.label()}{' **(default)**' if setting.is_default() else ''} | {t.correct}/{t.runs} "
        f"({100 * t.correct / t.runs:.0f}%) | {100 * t.looped / t.runs:.0f}% | {100 * t.at_limit / t.runs:.0f}% "
        f"| {t.guarded} | {t.seconds:.0f} s |"
        for setting, t in results)
    command = f"python -m bench.local_sampling --seeds {len(args.seeds)} --max-tokens {args.max_tokens}"

    def share(tally: Tally) -> str:
        return f"{100 * tally.correct / tally.runs:.0f}%"

    return f"""## Embedded model sampling

Command: `{command}`. Date: {date}.
CPU: {cpu()}; Python {platform.python_version()}. Seeds: {", ".join(map(str, args.seeds))}.

{len(QUESTIONS)} short factual questions with known answers (bench/local_sampling.py), asked one
at a time through `Local.stream` as in real use, max_tokens {args.max_tokens}. With no system message
the chat template adds SmolLM2's own; rows naming "{OLD_SYSTEM_PROMPT}" send the system
message patchbay used to add. Sampled settings run once per seed, greedy ones once (they are
deterministic); with fixed seeds and every prompt evaluated afresh, a rerun on the same machine
gives the same counts. top_k is llama.cpp's 40 throughout.

- correct: the answer contains an accepted word (whole word, any case);
- loops: it ends in one phrase repeated 3 or more times;
- at limit: it reached max_tokens (a long-winded answer, not necessarily a wrong one);
- guard: answers the repeat guard ended (it waits for 48 tokens of loop, so it cannot fire
  below max_tokens 49; the loops column sees those loops anyway).

| setting | correct | loops | at limit | guard | time |
|---|---:|---:|---:|---:|---:|
{rows}

With {len(QUESTIONS)} questions one answer is {100 / len(QUESTIONS):.0f} points, so rows within
{100 * TIE:.0f} points of the most correct are a tie. Among tied rows a sampled setting is preferred to
a greedy one (its score is a mean over seeds; a greedy score is one answer path per question, and
greedy paths change with the CPU's kernels and the prompt's batching, so that score does not carry
over to other machines), then the fewest loops. Best: {best[0].label()}, {share(best[1])}; the
most correct row otherwise: {second[0].label()}, {share(second[1])}. `Sampling` defaults now:
temperature {default.temperature:g}, top_p {default.top_p:g}, min_p {default.min_p:g}, repeat_penalty
{default.repeat_penalty:g}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per sampled setting (default 3)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--show", action="store_true", help="print every answer")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.seeds < 1 or args.max_tokens < 1:
        parser.error("--seeds and --max-tokens must be positive")
    args.seeds = list(range(1, args.seeds + 1))

    async def run_all() -> list[tuple[Setting, Tally]]:
        results = []
        for setting in SETTINGS:
            tally = await run_setting(setting, args.seeds, args.max_tokens)
            print(f"{setting.label()}: {tally.correct}/{tally.runs} correct, {tally.looped} loop, "
                  f"{tally.at_limit} at limit, {tally.seconds:.0f} s", flush=True)
            if args.show:
                for question, answer, right in tally.answers:
                    print(f"  {'+' if right else '-'} {question} -> {answer!r}")
            results.append((setting, tally))
        return results

    body = report(asyncio.run(run_all()), args)
    print(body)
    if not args.no_write:
        from bench.report import write_section

        write_section("local-sampling", body)


if __name__ == "__main__":
    main()
