"""Run a replica on its own event loop in a background thread.

Synchronous callers (``create_completion``, the first-generation module) block the thread they
run on; a replica served from that same thread's loop could never answer them. Here the
replica gets a loop of its own, as a remote service would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from tests.replicas.base import ReplicaServer

R = TypeVar("R", bound=ReplicaServer)

START_TIMEOUT = 10.0


@contextmanager
def threaded(replica: R) -> Iterator[R]:
    """Start ``replica`` on a new loop in a daemon thread; stop it and the loop on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="replica", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(replica.start(), loop).result(START_TIMEOUT)
        yield replica
    finally:
        asyncio.run_coroutine_threadsafe(replica.stop(), loop).result(START_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        loop.close()
