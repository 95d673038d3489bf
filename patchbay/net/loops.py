"""Event-loop plumbing of the transports: one instance per loop, and waiting for callbacks.

A connection belongs to the loop that opened it, so each transport keeps one instance per loop
(the sync bridge's loop in its own thread has its own). :class:`PerLoop` makes the instance on
first use and registers an async generator with the loop, which ``asyncio.run()`` and
``asyncio.Runner`` close (``loop.shutdown_asyncgens``) before closing the loop: that closes the
instance's sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["Closable", "PerLoop", "Wakeable"]


class Closable(Protocol):
    closed: bool

    async def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class PerLoop(Generic[T]):
    """The instance of ``factory`` for the running event loop."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()
        self._hooks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()  # loops in other threads (the sync bridge) make theirs too

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        instance = self._instances.get(loop)
        if instance is None or instance.closed:
            with self._lock:
                # A loop closed without shutting down its async generators keeps its instance: drop such ones.
                for other in [other for other in self._instances if other.is_closed()]:
                    del self._instances[other]
                instance = self._instances[loop] = self._factory()
                hook = self._hooks[loop] = _close_at_shutdown(instance)
                with contextlib.suppress(StopIteration):  # run it to its first yield: the loop knows it now
                    hook.asend(None).send(None)
        return instance


async def _close_at_shutdown(instance: Closable) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if not instance.closed:
            await instance.close()


class Wakeable:
    """One task waits (:meth:`_wait`) until a callback reports a change (:meth:`_wake`): a body
    chunk, the end of a response, an error. The protocol callbacks of both transports use it."""

    _waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None
