"""One routed request in its own process, for the cross-process tests.

    python -m tests.support.router_process cooldown REDIS_URL BAD_API_BASE GOOD_API_BASE
    python -m tests.support.router_process liaobots REDIS_URL LIAOBOTS_BASE AUTH_CODES

``cooldown`` routes "fake" to BAD then GOOD (OpenAI-compatible), one failure enough for a
cooldown; ``liaobots`` routes "gpt-4o" to Liaobots with the given auth codes. State is in Redis.
Prints one JSON line with the answer, the fallbacks and what the shared state holds.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from patchbay.errors import PatchbayError
from patchbay.providers import Liaobots
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import CooldownPolicy, RedisStateStore, RetryPolicy, Router, Target

HELLO = [{"role": "user", "content": "hello"}]


async def cooldown(state: RedisStateStore, bad: str, good: str) -> dict[str, Any]:
    router = Router.configure(
        {"fake": [Target(OpenAICompatible.configure("Bad", base_url=bad), "fake-small"),
                  Target(OpenAICompatible.configure("Good", base_url=good), "fake-small")]},
        retry=RetryPolicy(attempts=1), cooldown=CooldownPolicy(failures=1, window=60, duration=300), state=state,
    )
    result = await request(router, "fake")
    result["bad_cooldown"] = await state.cooldown_until("Bad/fake-small")
    return result


async def liaobots(state: RedisStateStore, base: str, codes: str) -> dict[str, Any]:
    router = Router.configure({"gpt-4o": [Target(Liaobots, "gpt-4o", base_url=base)]}, state=state)
    result = await request(router, "gpt-4o", auth=codes)
    result["banned"] = sorted(await state.banned_credentials("Liaobots"))
    return result


async def request(router: type[Router], model: str, **kwargs: Any) -> dict[str, Any]:
    stream = router.stream(model, HELLO, timeout=10, **kwargs)
    error = None
    try:
        await stream.collect()
    except PatchbayError as exc:
        error = str(exc)
    return {"text": stream.text, "error": error, "fallbacks": [f.provider for f in stream.fallbacks]}


async def main(mode: str, redis_url: str, *args: str) -> None:
    state = RedisStateStore(redis_url, namespace="cross-process")
    result = await (cooldown if mode == "cooldown" else liaobots)(state, *args)
    result["degraded"] = state.degraded
    await state.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
