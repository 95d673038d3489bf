"""Model listing never blocks the event loop: ``list_models`` is awaited end to end (client,
``/v1/models``, ``/ready``, the router's catch-all), cached per class for a TTL, and the sync
``get_models`` inside a running loop answers from what is known instead of blocking on I/O."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

import patchbay
from patchbay.errors import PatchbayError
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import Router, Target
from patchbay.routing import router as router_module
from patchbay.server.app import Gateway
from patchbay.settings import ServerSettings, Settings
from tests.support.asgi_client import ASGIClient

SLOW = 3.0  # seconds the slow upstream takes to answer GET /v1/models
MAX_GAP = 1.0  # seconds the ticker may go without a tick: far above noise, far below the stall
TICK = 0.05
MODELS = ["up-small", "up-large"]


class Upstream:
    """An OpenAI-shaped ``GET /v1/models`` on 127.0.0.1 that answers after ``delay`` seconds (or
    at once when ``release`` is set, so a test's end never waits for it), counting requests."""

    def __init__(self, delay: float = 0.0, models: list[str] | None = None, status: int = 200) -> None:
        self.delay = delay
        self.models = list(models or MODELS)
        self.status = status
        self.requests = 0
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.api_base = ""

    async def _list(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            with contextlib.suppress(TimeoutError):  # the delay is the scenario: a slow upstream
                await asyncio.wait_for(self.release.wait(), self.delay)
        if self.status != 200:
            return web.json_response({"error": {"message": "down", "type": "server_error"}}, status=self.status)
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def __aenter__(self) -> Upstream:
        app = web.Application()
        app.router.add_get("/v1/models", self._list)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.api_base = f"http://{host}:{port}/v1"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


class Ticker:
    """Records the loop's clock every :data:`TICK` seconds; ``largest_gap`` is the longest time
    the loop left it waiting (a blocked loop shows as one long gap)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            self.times.append(loop.time())

    async def __aenter__(self) -> Ticker:
        self.times.append(asyncio.get_running_loop().time())
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.times.append(asyncio.get_running_loop().time())
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    @property
    def largest_gap(self) -> float:
        return max(later - earlier for earlier, later in itertools.pairwise(self.times))


def service(upstream: Upstream, name: str = "up", **options: Any) -> type[OpenAICompatible]:
    return OpenAICompatible.configure(name, base_url=upstream.api_base, **options)


@pytest_asyncio.fixture
async def slow() -> AsyncIterator[Upstream]:
    async with Upstream(delay=SLOW) as upstream:
        yield upstream


@pytest_asyncio.fixture
async def fast() -> AsyncIterator[Upstream]:
    async with Upstream() as upstream:
        yield upstream


def assert_kept_ticking(ticker: Ticker) -> None:
    # The listing took about SLOW seconds and the loop ticked throughout it.
    assert ticker.times[-1] - ticker.times[0] >= SLOW - 0.5
    assert ticker.largest_gap <= MAX_GAP, f"the event loop stalled for {ticker.largest_gap:.2f} s"


# -- a slow upstream does not stall the loop ------------------------------------------------------


async def test_async_client_lists_a_slow_upstream_without_blocking(slow: Upstream) -> None:
    client = patchbay.AsyncClient(service(slow))
    async with Ticker() as ticker:
        listed = await client.models.list()
    assert_kept_ticking(ticker)
    assert [model.id for model in listed] == MODELS
    assert slow.requests == 1


@pytest_asyncio.fixture
async def gateway(slow: Upstream, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ASGIClient]:
    """The gateway over a router whose catch-all route passes names through to the slow upstream."""
    for variable in ("PATCHBAY_API_KEYS", "PATCHBAY_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    router = Router.configure({"fixed": [Target(service(slow), "up-small")], "*": [Target(service(slow, "any"))]})
    settings = Settings(server=ServerSettings(web_ui=False, request_log=False))
    async with ASGIClient(Gateway(settings, provider=router)) as app:
        yield app


@pytest.mark.parametrize("path", ["/v1/models", "/ready"])
async def test_server_lists_a_slow_upstream_without_blocking(gateway: ASGIClient, slow: Upstream, path: str) -> None:
    async with Ticker() as ticker:
        status, body = await gateway.get(path)
    assert_kept_ticking(ticker)
    assert status == 200
    names = ["fixed", *MODELS]  # the route, then what the catch-all serves under its own names
    if path == "/ready":
        assert body == {"status": "ready", "models": len(names)}
    else:
        assert [item["id"] for item in body["data"]] == names
    assert slow.requests == 1  # only the catch-all target is asked; "fixed" names its model


async def test_get_models_inside_a_loop_never_blocks(slow: Upstream) -> None:
    provider = service(slow, default_model="up-default")
    async with Ticker() as ticker:
        assert provider.get_models() == ["up-default"]  # nothing fetched yet: the static answer
    assert ticker.largest_gap <= MAX_GAP and slow.requests == 0
    slow.release.set()  # answer the next listing at once
    assert await provider.list_models() == MODELS
    assert provider.get_models() == MODELS  # now from the cache
    assert slow.requests == 1


# -- the cache -------------------------------------------------------------------------------------


async def test_a_listing_within_the_ttl_asks_nothing_and_refresh_asks_again(fast: Upstream) -> None:
    provider = service(fast)
    client = patchbay.AsyncClient(provider)
    assert [m.id for m in await client.models.list()] == MODELS
    fast.models = ["changed"]
    assert [m.id for m in await client.models.list()] == MODELS  # within the TTL: the cached list
    assert await provider.list_models() == MODELS
    assert fast.requests == 1
    assert [m.id for m in await client.models.list(refresh=True)] == ["changed"]
    assert fast.requests == 2
    assert await provider.list_models() == ["changed"]
    assert fast.requests == 2
    other = service(fast, "other")  # the cache is per configured class
    assert await other.list_models() == ["changed"] and fast.requests == 3


async def test_a_cache_past_its_ttl_is_fetched_again(fast: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = service(fast)
    assert await provider.list_models() == MODELS
    expires, models = provider.__dict__["_models_cache"]
    monkeypatch.setattr(provider, "_models_cache", (expires - 10_000.0, models))  # as if the TTL had passed
    fast.models = ["changed"]
    assert await provider.list_models() == ["changed"] and fast.requests == 2


async def test_configured_models_are_listed_without_asking(fast: Upstream) -> None:
    provider = service(fast, models=["mine"])
    assert await provider.list_models() == ["mine"]
    assert await provider.list_models(refresh=True) == ["mine"]
    assert fast.requests == 0


async def test_the_sync_client_lists_over_the_bridge(fast: Upstream) -> None:
    client = patchbay.Client(service(fast))
    listed = await asyncio.to_thread(client.models.list)  # plain sync code, off this loop
    assert [m.id for m in listed] == MODELS
    retrieved = await asyncio.to_thread(client.models.retrieve, "up-large")
    assert retrieved.id == "up-large"
    assert fast.requests == 1


# -- the router ------------------------------------------------------------------------------------


async def test_router_asks_its_catch_all_targets_concurrently(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Upstream(delay=SLOW, models=["a"]) as one, Upstream(delay=SLOW, models=["b"]) as two:
        router = Router.configure({"*": [Target(service(one, "one")), Target(service(two, "two"))]})
        started = asyncio.get_running_loop().time()
        assert await router.list_models() == ["a", "b"]
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 2 * SLOW - 1.0, f"the targets were asked one after the other ({elapsed:.1f} s)"
    assert one.requests == two.requests == 1


async def test_router_lists_a_failing_target_by_what_it_knows(fast: Upstream, caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async with Upstream(status=500) as down, Upstream(delay=SLOW) as stuck:
        monkeypatch.setattr(router_module, "LIST_TIMEOUT", 0.2)
        router = Router.configure({"named": [Target(service(fast, "fast"), "x")], "*": [
            Target(service(fast, "fast")), Target(service(down, "down")),
            Target(service(stuck, "stuck", default_model="stuck-default")),
        ]})
        with caplog.at_level(logging.WARNING, logger="patchbay.routing"):
            listed = await router.list_models()
    assert listed == ["named", *MODELS, "stuck-default"]  # "down" knows no names; "stuck" its default
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "down" in warned and "stuck" in warned


async def test_a_failing_service_without_a_default_raises_to_a_direct_caller() -> None:
    async with Upstream(status=500) as down:
        with pytest.raises(PatchbayError):
            await service(down).list_models()
        assert await service(down, "d", default_model="d0").list_models() == ["d0"]


def test_router_get_models_from_plain_sync_code_lists_the_catch_all() -> None:
    static = OpenAICompatible.configure("static", base_url="http://127.0.0.1:9/v1", models=["s1", "s2"])
    router = Router.configure({"named": [Target(static, "s2")], "*": [Target(static)]})
    assert router.get_models() == ["named", "s1", "s2"]
