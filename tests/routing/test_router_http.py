"""The router over real HTTP: OpenAI-compatible fakes and the Liaobots replica."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from patchbay.errors import StreamInterrupted
from patchbay.events import Fallback
from patchbay.providers import Liaobots
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.redact import fingerprint
from patchbay.routing import MemoryStateStore, RetryPolicy, Router, Target
from patchbay.timeouts import Timeout
from tests.replicas.liaobots import LiaobotsReplica
from tests.replicas.openai_fake import OpenAIFake

HELLO = [{"role": "user", "content": "hello"}]
FAST = Timeout(connect=2, first_byte=2, idle=0.5, total=10)


@pytest.fixture
async def second_fake() -> Iterator[OpenAIFake]:
    async with OpenAIFake() as fake:
        yield fake  # type: ignore[misc]


def upstream(fake: OpenAIFake, name: str, *, prefill: bool = False) -> type[OpenAICompatible]:
    return OpenAICompatible.configure(name, base_url=fake.api_base, default_model="fake-small", prefill=prefill)


async def test_continues_on_a_prefill_target_with_nothing_missing_or_repeated(
        openai_fake: OpenAIFake, second_fake: OpenAIFake) -> None:
    openai_fake.scenario = "disconnect"
    first, second = upstream(openai_fake, "First"), upstream(second_fake, "Second", prefill=True)
    router = Router.configure({"fake": [Target(first, "fake-small"), Target(second, "fake-small")]})
    stream = router.stream("fake", HELLO, timeout=FAST)
    events = [event async for event in stream]
    partial = second_fake.prefills[0]
    assert partial and openai_fake.answer.startswith(partial) and partial != openai_fake.answer
    assert stream.text == partial + second_fake.continuation
    fallback = next(e for e in events if isinstance(e, Fallback))
    assert fallback.provider == "First" and fallback.delivered == len(partial)
    assert stream.provider_info is not None and stream.provider_info.provider == "Second"


async def test_stall_is_a_mid_stream_failure(openai_fake: OpenAIFake, second_fake: OpenAIFake) -> None:
    openai_fake.scenario = "stall"
    router = Router.configure({"fake": [Target(upstream(openai_fake, "First"), "fake-small"),
                                        Target(upstream(second_fake, "Second"), "fake-small")]})
    received: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        async for text in router.create_async_generator("fake", HELLO, timeout=FAST):
            received.append(text)
    assert info.value.partial_text == "".join(received) != ""
    assert second_fake.chat_count == 0  # not prefill-capable: starting over would repeat the text


async def test_retry_after_header_is_honoured(openai_fake: OpenAIFake) -> None:
    openai_fake.scenario = "normal"
    openai_fake.fail_next, openai_fake.fail_status, openai_fake.retry_after = 1, 429, 1
    router = Router.configure({"fake": [Target(upstream(openai_fake, "Only"), "fake-small")]},
                              retry=RetryPolicy(attempts=2))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    router.sleep = record  # type: ignore[assignment]
    assert await router.create_async("fake", HELLO, timeout=FAST) == openai_fake.answer
    assert waits == [1.0]
    assert openai_fake.chat_count == 2


async def test_credential_bans_are_shared_through_the_state_store(liaobots_replica: LiaobotsReplica,
                                                                  clean_liaobots: None) -> None:
    liaobots_replica.rejected_codes = {"code-a"}
    liaobots_replica.valid_codes = {"code-b"}
    store = MemoryStateStore()
    router = Router.configure({"gpt-4o": [Target(Liaobots, "gpt-4o", base_url=liaobots_replica.base_url)]},
                              state=store)
    text = await router.create_async("gpt-4o", HELLO, auth="code-a,code-b")
    assert text == liaobots_replica.answer
    assert fingerprint("code-a") in await store.banned_credentials("Liaobots")
    assert "code-a" not in repr(await store.all_health())  # only fingerprints are stored

    # Another process (simulated: a fresh pool) sharing the store never tries the banned code.
    Liaobots.auth_codes.clear()
    before = len(liaobots_replica.requests_to("/api/chat"))
    await router.create_async("gpt-4o", HELLO, auth="code-a,code-b")
    used = [r.headers["x-auth-code"] for r in liaobots_replica.requests_to("/api/chat")[before:]]
    assert used == ["code-b"]


async def test_a_ban_is_written_to_the_shared_state_once(liaobots_replica: LiaobotsReplica,
                                                         clean_liaobots: None) -> None:
    liaobots_replica.rejected_codes = {"code-a"}
    liaobots_replica.valid_codes = {"code-b"}
    writes: list[str] = []

    class CountingStore(MemoryStateStore):
        async def ban_credential(self, pool: str, fingerprint: str, until: float) -> None:
            writes.append(fingerprint)
            await super().ban_credential(pool, fingerprint, until)

    router = Router.configure({"gpt-4o": [Target(Liaobots, "gpt-4o", base_url=liaobots_replica.base_url)]},
                              state=CountingStore())
    for _ in range(3):
        assert await router.create_async("gpt-4o", HELLO, auth="code-a,code-b") == liaobots_replica.answer
    assert writes == [fingerprint("code-a")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def client_tasks() -> set[asyncio.Task[object]]:
    """Tasks on this loop other than the fake server's own request handlers."""
    return {t for t in asyncio.all_tasks() if "RequestHandler" not in repr(t.get_coro())}


async def test_many_cancelled_streams_leak_no_task_connection_or_descriptor(openai_fake: OpenAIFake) -> None:
    openai_fake.delay_per_chunk = 0.05
    router = Router.configure({"fake": [Target(upstream(openai_fake, "Slow"), "fake-small")]})
    await router.create_async("fake", HELLO, timeout=FAST)  # warm up imports and pools
    tasks_before = client_tasks()
    fds_before = open_fds()
    for _ in range(40):
        stream = router.create_async_generator("fake", HELLO, timeout=FAST)
        async for _ in stream:
            break
        await stream.aclose()
    await openai_fake.wait_until(lambda: openai_fake.open_streams == 0, timeout=10)
    assert openai_fake.disconnects >= 40  # the upstream saw every client go away
    assert client_tasks() <= tasks_before, [t.get_coro() for t in client_tasks() - tasks_before]
    assert open_fds() <= fds_before
    assert (await router.health())["Slow/fake-small"].in_flight == 0
