"""The router: a provider that serves each request from the first target that works.

A :class:`Router` is configured like any provider class (:meth:`Router.configure` makes a
subclass) and has the same interface, so it composes with everything else. Per request it:

1. takes the route's targets, drops those in cooldown (unless all are) and orders the rest by
   the strategy;
2. tries them in turn; before any text, each failure is handled by :func:`~.policy.decide`
   (retry with backoff, next target, larger context, or stop);
3. after text was delivered nothing is sent twice: with ``mid_stream="continue"`` a target that
   supports assistant prefill continues the answer from the delivered text (a :class:`Fallback`
   event marks the switch); otherwise :class:`StreamInterrupted` carries the delivered text;
4. bounds everything by one total deadline, and closes the upstream at once when the caller
   stops reading.

Cooldowns, health and credential bans live in a :class:`~.state.StateStore`, in memory or in
Redis (shared across processes and hosts).

Embeddings (:meth:`Router.embed`) are not a stream: the route's targets that make them are tried
in the same order, with the same retries, cooldowns and health records, and since an embedding
request has no partial output and is idempotent, any failure may move on to the next target.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, ClassVar, Literal, TypeVar

import patchbay.routing.tracing as tracing
from patchbay.chat.embeddings import EmbeddingRequest, EmbeddingResult
from patchbay.chat.request import ChatCompletionRequest, ChatMessage
from patchbay.errors import (
    AllProvidersFailed,
    Attempt,
    ContextTooLong,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotSupported,
    PatchbayError,
    RateLimited,
    StreamInterrupted,
    UnsupportedFeature,
)
from patchbay.events import Fallback, StreamEvent, TextDelta, ToolCallDelta
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.providers.capabilities import Capabilities, needs
from patchbay.redact import clip
from patchbay.routing.policy import Action, CooldownPolicy, RetryPolicy, decide
from patchbay.routing.state import Health, MemoryStateStore, StateStore
from patchbay.routing.strategies import USES_HEALTH, get_strategy
from patchbay.routing.targets import RouteTable, Target
from patchbay.secrets.pool import CredentialPool
from patchbay.sync import in_event_loop, run_sync

__all__ = ["MidStream", "RetryProvider", "Router"]

log = logging.getLogger("patchbay.routing")

MidStream = Literal["continue", "error"]
T = TypeVar("T")
CREDENTIAL_BAN_SECONDS = 3600.0
LIST_TIMEOUT = 10.0  # seconds one catch-all target may take to list its models
#: Needs whose answer has a structure a prefill continuation would break.
STRUCTURED = frozenset({"tools", "json_object", "json_schema"})


class _Request:
    """The bookkeeping of one routed request: where its output began and every failed attempt."""

    def __init__(self, request: ChatCompletionRequest, call: Call) -> None:
        self.request = request
        self.model = request.model
        self.call = call
        self.timeout = call.timeout
        self.transcript = call.transcript
        self.start = call.transcript.mark()  # what reached the caller before this router ran
        self.started = time.monotonic()
        self.attempts: list[Attempt] = []

    @property
    def delivered(self) -> bool:
        """Whether any output of this request reached the caller."""
        return self.transcript.since(self.start)

    @property
    def text(self) -> str:
        return self.transcript.text_since(self.start)

    @property
    def continuable(self) -> bool:
        """Whether a target that takes a prefill can continue what was delivered without
        repeating any of it: plain text of one answer only, never a started tool call or a JSON
        answer (a continuation would start the structure afresh)."""
        return self.transcript.only_text and (self.request.n or 1) == 1 and not self.structured

    @functools.cached_property
    def structured(self) -> bool:
        return any(need.feature in STRUCTURED for need in needs(self.request))

    def deadline_error(self) -> DeadlineExceeded:
        tried = "; ".join(f"{a.provider}/{a.model}: {a.error}: {a.message}" for a in self.attempts if not a.skipped)
        return DeadlineExceeded(f"the request ran past its total deadline of {self.timeout.total:g} s"
                                + (f" after: {tried}" if tried else ""))

    def remaining(self) -> float | None:
        if self.timeout.total is None:
            return None
        return self.timeout.total - (time.monotonic() - self.started)


class Router(AsyncGeneratorProvider):
    """Routes each request over a :class:`RouteTable`; configure with :meth:`configure`."""

    name = "Router"
    url = "patchbay://router"
    announces_provider = False  # the targets announce themselves
    fits_context = True  # each target fits the history to its own model
    delegates = True  # each target checks its capabilities, fits the history and cuts at stops

    routes: ClassVar[RouteTable | None] = None
    strategy: ClassVar[str] = "priority"
    retry: ClassVar[RetryPolicy] = RetryPolicy()
    cooldown: ClassVar[CooldownPolicy] = CooldownPolicy()
    mid_stream: ClassVar[MidStream] = "continue"
    state: ClassVar[StateStore] = MemoryStateStore()
    rng: ClassVar[random.Random] = random.Random()
    #: Injected for tests: how to wait before a retry, and the wall clock used for cooldowns
    #: (the state store must use the same clock).
    sleep: ClassVar[Callable[[float], Awaitable[None]]] = staticmethod(asyncio.sleep)  # type: ignore[assignment]
    clock: ClassVar[Callable[[], float]] = staticmethod(time.time)  # type: ignore[assignment]

    @classmethod
    def configure(
        cls,
        routes: RouteTable | Mapping[str, Sequence[Any]],
        *,
        name: str = "Router",
        strategy: str = "priority",
        retry: RetryPolicy | None = None,
        cooldown: CooldownPolicy | None = None,
        mid_stream: MidStream = "continue",
        state: StateStore | None = None,
        seed: int | None = None,
    ) -> type[Router]:
        """A router class for ``routes`` (a RouteTable, or plain data for :meth:`RouteTable.from_config`)."""
        table = routes if isinstance(routes, RouteTable) else RouteTable.from_config(routes)
        get_strategy(strategy)  # an unknown name fails here, not on the first request
        if mid_stream not in ("continue", "error"):
            raise InvalidRequest(f"mid_stream must be 'continue' or 'error', got {mid_stream!r}", param="mid_stream")
        attrs = {
            "__module__": cls.__module__, "name": name, "routes": table, "strategy": strategy,
            "retry": retry or RetryPolicy(), "cooldown": cooldown or CooldownPolicy(), "mid_stream": mid_stream,
            "state": state or MemoryStateStore(), "rng": random.Random(seed),
        }
        return type(name.replace("-", "_"), (cls,), attrs)

    # -- the provider interface -------------------------------------------------------------------

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        cls._table().targets_for(model)  # unknown -> ModelNotSupported, at once
        return model or ""

    @classmethod
    def route_of(cls, model: str | None) -> list[str]:
        """The targets ``model`` resolves to, in order, as ``provider/model[@base_url]`` (what can
        answer it: the response cache's key holds it); unknown -> ModelNotSupported."""
        return [target.key(model) + (f"@{target.base_url}" if target.base_url else "")
                for target in cls._table().targets_for(model)]

    @classmethod
    def get_models(cls) -> list[str]:
        """The route names, then what the catch-all route passes through (see :meth:`list_models`).
        For sync callers: inside a running event loop it never blocks (the targets' cached or
        static lists); from plain sync code it lists them over the bridge."""
        targets = cls._catch_all()
        if targets and not in_event_loop():
            return run_sync(cls.list_models(), timeout=LIST_TIMEOUT + 1)
        return cls._listed([_known_models(target) for target in targets])

    @classmethod
    async def list_models(cls, *, refresh: bool = False) -> list[str]:
        """The route names, then the models of the catch-all route's targets (asked concurrently,
        each within :data:`LIST_TIMEOUT`), which it serves under their own names. A target that
        cannot say contributes its cached or static names, and is logged, not raised."""
        listed = await asyncio.gather(*(cls._target_models(target, refresh) for target in cls._catch_all()))
        return cls._listed(listed)

    @classmethod
    def _catch_all(cls) -> list[Target]:
        try:
            return cls._table().targets_for(None)  # None names no route: the catch-all's targets
        except ModelNotSupported:
            return []

    @classmethod
    async def _target_models(cls, target: Target, refresh: bool) -> list[str]:
        if target.model:
            return [target.model]
        try:
            return await asyncio.wait_for(target.provider.list_models(refresh=refresh), LIST_TIMEOUT)
        except (PatchbayError, TimeoutError, OSError) as error:
            fallback = _known_models(target)
            log.warning("%s: could not list the models of %s (%s: %s); listing %s", cls.name, target.provider.name,
                        type(error).__name__, error, ", ".join(fallback) or "none")
            return fallback

    @classmethod
    def _listed(cls, lists: Sequence[list[str]]) -> list[str]:
        names = dict.fromkeys(cls._table().names())
        for models in lists:
            names.update(dict.fromkeys(models))
        return list(names)

    @classmethod
    def model_records(cls) -> list[Any]:
        return []

    @classmethod
    def capabilities(cls) -> Capabilities:
        """Everything: each request is checked against its route's targets instead."""
        return Capabilities.all_native()

    @classmethod
    async def health(cls) -> dict[str, Health]:
        """Health of every target that has been tried (success rate, latency, last error...)."""
        return await cls.state.all_health()

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        """Serve the request from the route's targets (see the module docstring)."""
        state = _Request(request, call)
        route = cls._table().targets_for(request.model)
        capable = cls._capable(route, state)
        pending = await cls._ordered(capable, state.model)
        tried_any = False
        while pending:
            target = pending.pop(0)
            if state.delivered and not (state.continuable and target.supports_prefill):
                continue  # it could only start over, which would repeat what was delivered
            for retry in range(cls.retry.attempts):
                if (remaining := state.remaining()) is not None and remaining <= 0:
                    raise cls._final(state, state.deadline_error())
                tried_any = True
                try:
                    async with aclosing(cls._attempt(target, state)) as events:
                        async for event in events:
                            yield event
                    return
                except PatchbayError as error:
                    action = decide(error)
                    await cls._record_failure(target, state.model, state.attempts, error)
                    if action is Action.FAIL:
                        raise cls._final(state, error, decisive=True) from error
                    if state.delivered:
                        if cls.mid_stream == "error" or not state.continuable \
                                or not any(t.supports_prefill for t in pending):
                            raise cls._final(state, error) from error
                    elif action is Action.RETRY and retry + 1 < cls.retry.attempts:
                        retry_after = error.retry_after if isinstance(error, RateLimited) else None
                        delay = cls.retry.delay(retry, retry_after, cls.rng)
                        remaining = state.remaining()
                        if delay is not None and (remaining is None or delay < remaining):
                            await cls.sleep(delay)
                            continue
                    elif action is Action.LARGER_CONTEXT:
                        window = target.context_window(state.model) or 0
                        pending = [t for t in pending if (t.context_window(state.model) or 0) > window]
                    if pending:
                        tracing.fallback(target.provider.name, target.model_for(state.model) or state.model or "",
                                         type(error).__name__, len(state.text))
                        yield Fallback(target.provider.name, target.model_for(state.model) or "",
                                       type(error).__name__, error.message, len(state.text))
                    break
        if state.delivered:
            raise cls._final(state, StreamInterrupted("no remaining target can continue the answer"))
        note = "" if tried_any else " (every target is cooling down or unavailable)"
        raise AllProvidersFailed(state.attempts, model=state.model, note=note)

    # -- one attempt ------------------------------------------------------------------------------

    @classmethod
    def _capable(cls, targets: list[Target], state: _Request) -> list[Target]:
        """The targets that can honour what the request needs; the others become skipped attempts.
        None can: UnsupportedFeature (400) naming the field, never an answer that dropped it."""
        wanted = needs(state.request)
        if not wanted:
            return targets
        capable: list[Target] = []
        accepted: set[str] = set()  # features some target accepts
        for target in targets:
            capabilities = target.provider.capabilities()
            accepted.update(need.feature for need in wanted if capabilities.accepts(need.feature))
            lacking = next((need for need in wanted if not capabilities.accepts(need.feature)), None)
            if lacking is None:
                capable.append(target)
                continue
            error = UnsupportedFeature(f"it does not accept {lacking.phrase} (asked for by {lacking.param})",
                                       param=lacking.param)
            state.attempts.append(Attempt.of(error, target.provider.name, target.model_for(state.model) or "",
                                             skipped=True))
        if not capable:
            missing = next((need for need in wanted if need.feature not in accepted), None)
            if missing is not None:
                raise UnsupportedFeature(f"no target of route {state.model!r} accepts {missing.phrase} "
                                         f"(asked for by {missing.param})", param=missing.param, model=state.model)
            together = " and ".join(need.phrase for need in wanted)
            raise UnsupportedFeature(f"no target of route {state.model!r} accepts {together} together",
                                     param=wanted[0].param, model=state.model)
        return capable

    @classmethod
    async def _attempt(cls, target: Target, state: _Request) -> AsyncGenerator[StreamEvent, None]:
        """Stream from one target, continuing after what was delivered when there is some."""
        key = target.key(state.model)
        pool = _pool_of(target.provider)
        shared_bans = await cls._load_bans(pool)
        request = state.request
        if state.delivered and request.prompt is not None:  # a raw completion continues its prompt
            request = request.replace(prompt=request.prompt + state.text)
        elif state.delivered:
            request = request.with_messages([*request.messages, ChatMessage(role="assistant", content=state.text)])
        remaining = state.remaining()
        limits = state.timeout if remaining is None else state.timeout.with_total(max(remaining, 0.001))
        call = state.call
        await cls.state.add_in_flight(key, 1)
        started = time.monotonic()
        first_output: float | None = None
        operation = "text_completion" if request.prompt is not None else "chat"
        try:
            with tracing.attempt_span(operation, target.provider.name,
                                      target.model_for(state.model) or state.model or "") as span:
                stream = target.provider.open(request, model=target.model_for(state.model),
                                              transcript=state.transcript, proxy=call.proxy,
                                              base_url=target.base_url or call.base_url, timeout=limits,
                                              auth=call.auth, api_key=call.api_key, ledger=call.ledger)
                async with aclosing(stream) as events:
                    async for event in events:
                        if first_output is None and isinstance(event, TextDelta | ToolCallDelta):
                            first_output = time.monotonic()
                        span.observe(event)
                        yield event
        finally:
            await cls.state.add_in_flight(key, -1)
            await cls._publish_bans(pool, shared_bans)
        now = time.monotonic()
        await cls.state.record_success(key, latency=now - started,
                                       ttft=None if first_output is None else first_output - started)

    @classmethod
    async def _record_failure(cls, target: Target, requested: str | None, attempts: list[Attempt],
                              error: PatchbayError) -> None:
        """Note the failure: the attempt, the target's health, and a cooldown when it is due. A
        request the client got wrong (InvalidRequest, except ContextTooLong) says nothing about
        the target's health: it is only noted as an attempt."""
        key = target.key(requested)
        model = target.model_for(requested) or ""
        attempts.append(Attempt.of(error, target.provider.name, model))
        if isinstance(error, InvalidRequest) and not isinstance(error, ContextTooLong):
            log.info("%s refused the request: %s (%s)", key, type(error).__name__, error.message)
            return
        now = cls.clock()
        failures = await cls.state.record_failure(key, error=clip(f"{type(error).__name__}: {error.message}", 300),
                                                  window=cls.cooldown.window)
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        if failures >= cls.cooldown.failures or error.cools_down_at_once:
            await cls.state.set_cooldown(key, now + cls.cooldown.duration)
        elif retry_after is not None and retry_after > cls.retry.max_retry_after:
            await cls.state.set_cooldown(key, now + retry_after)  # it told us when to come back
        log.info("%s failed: %s (%s)", key, type(error).__name__, error.message)

    # -- embeddings -------------------------------------------------------------------------------

    @classmethod
    async def embed(cls, request: EmbeddingRequest, call: Call) -> EmbeddingResult:
        """Embeddings from the route's targets that make them (see the module docstring); when none
        of them does, UnsupportedFeature (400) naming ``model``. The route is ``call.model`` (the
        name this router was asked for, which a router above it may have chosen)."""
        route = call.model or request.model
        attempts: list[Attempt] = []
        capable: list[Target] = []
        for target in cls._table().targets_for(route):
            if target.provider.capabilities().accepts("embeddings"):
                capable.append(target)
                continue
            skipped = UnsupportedFeature("it does not make embeddings", param="model")
            attempts.append(Attempt.of(skipped, target.provider.name, target.model_for(route) or "",
                                       skipped=True))
        if not capable:
            raise UnsupportedFeature(f"no target of route {route!r} makes embeddings", param="model",
                                     model=route)
        started = time.monotonic()
        tried_any = False
        last_error: PatchbayError | None = None
        for target in await cls._ordered(capable, route):
            for retry in range(cls.retry.attempts):
                remaining = None if call.timeout.total is None else call.timeout.total - (time.monotonic() - started)
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded(f"the request ran past its total deadline of {call.timeout.total:g} s")
                tried_any = True
                try:
                    return await cls._embed_with(target, request, call, remaining, route)
                except PatchbayError as error:
                    last_error = error
                    # A target that cannot honour a field (dimensions) leaves the others to try.
                    action = Action.NEXT if isinstance(error, UnsupportedFeature) else decide(error)
                    await cls._record_failure(target, route, attempts, error)
                    if action is Action.FAIL:
                        if len(attempts) > 1:
                            failed = AllProvidersFailed(attempts, model=route, status=error.status)
                            failed.param = error.param
                            raise failed from error
                        raise
                    if action is Action.RETRY and retry + 1 < cls.retry.attempts:
                        retry_after = error.retry_after if isinstance(error, RateLimited) else None
                        delay = cls.retry.delay(retry, retry_after, cls.rng)
                        left = None if remaining is None else remaining - (time.monotonic() - started)
                        if delay is not None and (left is None or delay < left):
                            await cls.sleep(delay)
                            continue
                    break
        tried = [attempt for attempt in attempts if not attempt.skipped]
        if tried and all(attempt.error == UnsupportedFeature.__name__ for attempt in tried):
            if len(attempts) == 1 and last_error is not None:
                raise last_error  # one target, and the field it cannot honour: its own 400
            failed = AllProvidersFailed(attempts, model=route, status=400)
            failed.param = last_error.param if last_error is not None else "model"
            raise failed
        note = "" if tried_any else " (every target is cooling down or unavailable)"
        raise AllProvidersFailed(attempts, model=route, note=note)

    @classmethod
    async def _embed_with(cls, target: Target, request: EmbeddingRequest, call: Call, remaining: float | None,
                          route: str) -> EmbeddingResult:
        """One target's embeddings, counted in its in-flight requests and health as a chat is."""
        key = target.key(route)
        pool = _pool_of(target.provider)
        shared_bans = await cls._load_bans(pool)
        limits = call.timeout if remaining is None else call.timeout.with_total(max(remaining, 0.001))
        await cls.state.add_in_flight(key, 1)
        started = time.monotonic()
        try:
            result = await target.provider.create_embedding(
                request, model=target.model_for(route), proxy=call.proxy,
                base_url=target.base_url or call.base_url, timeout=limits, api_key=call.api_key)
        finally:
            await cls.state.add_in_flight(key, -1)
            await cls._publish_bans(pool, shared_bans)
        await cls.state.record_success(key, latency=time.monotonic() - started, ttft=None)
        return result

    # -- ordering, credentials, errors ----------------------------------------------------------

    @classmethod
    async def _ordered(cls, targets: list[Target], model: str | None) -> list[Target]:
        """Targets not in cooldown, in strategy order; all of them (soonest free first) if none is free."""
        if len(targets) == 1:  # nothing to order; a cooling target is still tried, as with several
            return targets
        now = cls.clock()
        keys = [t.key(model) for t in targets]
        until = dict(zip(targets, await _each(cls.state.cooldown_until, keys), strict=True))
        free = [t for t in targets if until[t] is None or until[t] <= now]  # type: ignore[operator]
        if not free:
            return sorted(targets, key=lambda t: until[t] or 0.0)
        health: dict[Target, Health] = {}
        if cls.strategy in USES_HEALTH:  # only these strategies read it: spare the store the round trips
            health = dict(zip(targets, await _each(cls.state.health, keys), strict=True))
        return get_strategy(cls.strategy)(free, health, cls.rng)

    @classmethod
    async def _load_bans(cls, pool: CredentialPool | None) -> set[str]:
        """Apply the credential bans in the shared state to the provider's pool; return them."""
        if pool is None:
            return set()
        shared = await cls.state.banned_credentials(pool.name)
        pool.apply_bans(shared)
        return shared

    @classmethod
    async def _publish_bans(cls, pool: CredentialPool | None, shared: set[str]) -> None:
        """Share the bans this process made that the shared state does not have yet."""
        if pool is None:
            return
        until = cls.clock() + CREDENTIAL_BAN_SECONDS
        for mark in pool.banned_fingerprints() - shared:
            await cls.state.ban_credential(pool.name, mark, until)

    @classmethod
    def _final(cls, request: _Request, error: PatchbayError, *, decisive: bool = False) -> PatchbayError:
        """The error to raise at the end: it carries the delivered text when there was some, and
        every attempt when others came before it (``decisive``: its status stands for all)."""
        if decisive and not request.delivered and len(request.attempts) > 1:
            failed = AllProvidersFailed(request.attempts, model=request.model, status=error.status)
            failed.param = error.param
            return failed
        if request.delivered:
            reason = error
            while isinstance(reason, StreamInterrupted) and isinstance(reason.__cause__, PatchbayError):
                reason = reason.__cause__  # say why once, not "interrupted after 26 ...: interrupted after 26 ..."
            final = StreamInterrupted(
                f"the answer was interrupted after {len(request.text)} characters: {reason.message}",
                partial_text=request.text,
            )
            final.__cause__ = error
            return final
        return error

    @classmethod
    def _table(cls) -> RouteTable:
        if cls.routes is None:
            raise InvalidRequest("this Router has no routes; use Router.configure(routes) or RetryProvider([...])")
        return cls.routes


def _known_models(target: Target) -> list[str]:
    """What a catch-all target serves, known without asking (inside an event loop, a provider's
    ``get_models`` gives its cached or static list without blocking): a target with a model asks
    for that one whatever the caller named."""
    if target.model:
        return [target.model]
    get_models = getattr(target.provider, "get_models", None)
    return list(get_models()) if get_models is not None else []


async def _each(lookup: Callable[[str], Awaitable[T]], keys: list[str]) -> list[T]:
    """``lookup`` for every key: concurrently when there are several (round trips to a shared
    store overlap), directly when there is one (no task to create)."""
    if len(keys) == 1:
        return [await lookup(keys[0])]
    return list(await asyncio.gather(*map(lookup, keys)))


def _pool_of(provider: type[AsyncGeneratorProvider]) -> CredentialPool | None:
    for attribute in ("auth_codes", "credentials"):
        pool = getattr(provider, attribute, None)
        if isinstance(pool, CredentialPool):
            return pool
    return None


def RetryProvider(
    providers: Sequence[type[AsyncGeneratorProvider]], shuffle: bool = False, **options: Any
) -> type[Router]:
    """A router over ``providers`` that passes the requested model to each of them."""
    if not providers:
        raise InvalidRequest("RetryProvider needs at least one provider")
    return Router.configure({"*": [Target(p) for p in providers]}, name="RetryProvider",
                            strategy="shuffle" if shuffle else "priority", **options)
