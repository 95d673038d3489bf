"""One routed request in its own process, for the cross-process tests.

    python -m tests.router_process REDIS_URL BAD_API_BASE GOOD_API_BASE

Routes "fake" to BAD then GOOD (OpenAI-compatible), with one failure enough for a cooldown,
state in Redis; prints one JSON line: the answer, the attempts, and BAD's cooldown.
"""

from __future__ import annotations

import asyncio
import json
import sys

from patchbay.errors import PatchbayError
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import CooldownPolicy, RedisStateStore, RetryPolicy, Router, Target


async def main(redis_url: str, bad: str, good: str) -> None:
    state = RedisStateStore(redis_url, namespace="cross-process")
    router = Router.configure(
        {"fake": [Target(OpenAICompatible.configure("Bad", base_url=bad), "fake-small"),
                  Target(OpenAICompatible.configure("Good", base_url=good), "fake-small")]},
        retry=RetryPolicy(attempts=1), cooldown=CooldownPolicy(failures=1, window=60, duration=300), state=state,
    )
    stream = router.stream("fake", [{"role": "user", "content": "hello"}], timeout=10)
    error = None
    try:
        await stream.collect()
    except PatchbayError as exc:
        error = str(exc)
    result = {
        "text": stream.text,
        "error": error,
        "fallbacks": [f.provider for f in stream.fallbacks],
        "bad_cooldown": await state.cooldown_until("Bad/fake-small"),
        "degraded": state.degraded,
    }
    await state.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
