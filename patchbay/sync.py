"""Iterate an async stream from synchronous code, with or without a running event loop.

The stream runs on one long-lived event loop in a daemon thread (:func:`bridge_loop`); the
caller's thread blocks on each item. This works the same in a plain script, inside Jupyter or
inside an async web framework (whose loop keeps its own thread), and needs no ``nest_asyncio``.
Stopping early (``break``, ``close()``, garbage collection) closes the async stream on the bridge
loop, which closes the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["BlockingStream", "bridge_loop", "in_event_loop", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
CLOSE_TIMEOUT = 10.0  # seconds allowed for closing an abandoned stream


def bridge_loop() -> asyncio.AbstractEventLoop:
    """The shared background event loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="patchbay-bridge", daemon=True)
            thread.start()
            _loop, _thread = loop, thread
        return _loop


def in_event_loop() -> bool:
    """Whether this thread is running an event loop: then sync code must not block on I/O."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_sync(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """Run ``awaitable`` on the bridge loop and wait for its result from this thread."""
    loop = bridge_loop()
    if threading.current_thread() is _thread:
        raise RuntimeError("cannot block on the patchbay bridge loop from inside it; use the async API")

    async def runner() -> T:
        return await awaitable

    future: Future[T] = asyncio.run_coroutine_threadsafe(runner(), loop)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise


class BlockingStream(Generic[T]):
    """A synchronous iterator over an async stream made by ``factory`` on the bridge loop.

    It is also an async iterable (over a fresh stream from ``factory``), so the same object works
    with ``for`` in plain code and ``async for`` inside a coroutine.
    """

    def __init__(self, factory: Callable[[], AsyncIterator[T]]) -> None:
        self._factory = factory
        self._stream: AsyncIterator[T] | None = None
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        if self._stream is None:
            self._stream = run_sync(self._open())
        try:
            return run_sync(self._stream.__anext__())
        except StopAsyncIteration:
            self._closed = True
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    async def _open(self) -> AsyncIterator[T]:
        return self._factory().__aiter__()

    def close(self) -> None:
        """Stop early: close the async stream (and so the upstream request)."""
        if self._closed and self._stream is None:
            return
        self._closed = True
        stream, self._stream = self._stream, None
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            run_sync(aclose(), timeout=CLOSE_TIMEOUT)

    def __enter__(self) -> BlockingStream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed and self._stream is not None:
            with contextlib.suppress(Exception):  # nothing useful to do with it during collection
                self.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._factory().__aiter__()
