"""An event loop in a daemon thread, for tests whose replicas and gateway must keep answering
while a synchronous client (an SDK's sync API, a subprocess) blocks the test's own thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds a coroutine run on the loop (a start, a stop) may take, and the thread's join.
LOOP_TIMEOUT = 120.0


class BackgroundLoop:
    """An event loop in a daemon thread; :meth:`run` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="services", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = LOOP_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(LOOP_TIMEOUT)
        self.loop.close()
