"""OpenAICompatible against a real peer nobody here wrote: llama-cpp-python's OpenAI server.

The server runs as a subprocess on 127.0.0.1 with the embedded SmolLM2 model; readiness is
read from its log line, not guessed with sleeps. No test asserts the model's words (they change
with the CPU and with the peer's prompt cache): they assert what crosses the wire.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from patchbay.errors import UpstreamError
from patchbay.events import Finish, TextDelta
from patchbay.providers.local.model import default_model_path
from patchbay.providers.openai_compatible import OpenAICompatible
from tests.support.paths import ROOT

pytestmark = [pytest.mark.process]

START_TIMEOUT = 120.0
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]




def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.llama_server", "--model", str(default_model_path()),
         "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    ready = threading.Event()
    log: list[str] = []

    def watch() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if "Uvicorn running on" in line:
                ready.set()
        ready.set()  # the process ended: stop waiting

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        if not ready.wait(START_TIMEOUT) or process.poll() is not None:
            pytest.fail("llama_cpp.server (tests.support.llama_server) did not start:\n" + "".join(log[-20:]))
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        watcher.join(10)
        assert process.stderr is not None
        process.stderr.close()


@pytest.fixture
def peer(llama_server: str) -> type[OpenAICompatible]:
    return OpenAICompatible.configure("LlamaCppServer", base_url=llama_server, default_model="smollm2")


async def test_lists_its_models(peer: type[OpenAICompatible]) -> None:
    assert "smollm2" in await peer.fetch_models()


async def test_streams_an_answer_with_finish_and_usage(peer: type[OpenAICompatible]) -> None:
    stream = peer.stream("", QUESTION, temperature=0, max_tokens=32)
    events = [event async for event in stream]
    assert stream.text.strip()
    assert sum(isinstance(e, TextDelta) for e in events) > 1  # really streamed, in pieces
    assert any(isinstance(e, Finish) for e in events) and stream.finish_reason in ("stop", "length")
    # its stream has no usage chunk: patchbay's estimate stands in, so the answer is still charged
    assert stream.usage is not None and stream.usage.completion_tokens > 0


async def test_non_streaming_answer(peer: type[OpenAICompatible]) -> None:
    stream = peer.stream("", QUESTION, temperature=0, max_tokens=32, stream=False)
    await stream.collect()
    assert stream.text.strip()
    assert stream.usage is not None and stream.usage.prompt_tokens > 0 and 0 < stream.usage.completion_tokens <= 32
    assert stream.finish_reason == ("length" if stream.usage.completion_tokens == 32 else "stop")


async def test_max_tokens_and_stop_reach_the_peer(peer: type[OpenAICompatible]) -> None:
    stream = peer.stream("", QUESTION, temperature=0, max_tokens=3, stream=False)
    await stream.collect()
    assert stream.finish_reason == "length"
    assert stream.usage is not None and stream.usage.completion_tokens == 3
    text = await peer.create_async("", QUESTION, temperature=0, max_tokens=32)
    words = [m.group() for m in re.finditer(r"\w{3,}", text)]
    assert words, f"no word to stop at in {text!r}"
    stop = words[len(words) // 2]
    assert stop not in await peer.create_async("", QUESTION, temperature=0, max_tokens=32, stop=[stop])


async def test_peer_error_surfaces_with_its_status_and_message(peer: type[OpenAICompatible]) -> None:
    # The peer answers a mistyped field with a 500 naming the field (its own choice of status);
    # it must surface as UpstreamError carrying that message, not as text or a raw exception.
    with pytest.raises(UpstreamError) as info:
        await peer.create_async("", QUESTION, extra_body={"max_tokens": "lots"})
    assert info.value.upstream_status == 500
    assert "max_tokens" in str(info.value)
    assert str(info.value).startswith("LlamaCppServer: ")
