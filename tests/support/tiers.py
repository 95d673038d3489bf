"""Test tiers as pytest markers, so a developer can run the fast part of the suite in seconds.

- ``unit``: in this process only (loopback servers in threads or on the test's event loop are
  fine); given automatically to every test that has none of the other tiers.
- ``process``: starts a subprocess (``patchbay`` itself, a gateway, redis-server, a peer server).
- ``model``: runs the embedded model (SmolLM2 through llama-cpp-python) in this process.
- ``browser``: drives headless Chromium.
- ``redis``: needs a real redis-server; given automatically to tests that use the
  ``redis_server`` fixture.

Starting redis-server or Chromium is what ``redis`` and ``browser`` tests do, so those marks
allow a subprocess too.

A module declares its tiers with ``pytestmark``. The marks are checked while the suite runs: a
test that starts a subprocess or runs the model without its mark fails and says which mark it
lacks, so ``pytest -m unit`` stays fast and truthful.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

TIERS = {
    "unit": "in this process only; the fast tier (given to every test with no other tier)",
    "process": "starts a subprocess (patchbay, a gateway, redis-server, a peer server)",
    "model": "runs the embedded model in this process",
    "browser": "drives headless Chromium",
    "redis": "needs a real redis-server (given to tests that use the redis_server fixture)",
}


class Activity:
    """Counts, for the test running now, the subprocesses started and the model generations run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes = 0
        self.generations = 0

    def reset(self) -> tuple[int, int]:
        with self.lock:
            seen = (self.processes, self.generations)
            self.processes = self.generations = 0
            return seen


activity = Activity()


def _count_processes() -> None:
    original = subprocess.Popen.__init__

    def counting_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        with activity.lock:
            activity.processes += 1
        original(self, *args, **kwargs)

    subprocess.Popen.__init__ = counting_init  # type: ignore[method-assign]


def _count_generations() -> None:
    try:
        from patchbay.providers.local.model import LocalModel
    except ImportError:  # the package's own import failed: every test will say so
        return
    original = LocalModel._generate

    def counting_generate(self: LocalModel, *args: Any, **kwargs: Any) -> None:
        with activity.lock:
            activity.generations += 1
        original(self, *args, **kwargs)

    LocalModel._generate = counting_generate  # type: ignore[method-assign]
    embed = LocalModel._embed

    def counting_embed(self: LocalModel, *args: Any, **kwargs: Any) -> Any:  # embeddings run the model too
        with activity.lock:
            activity.generations += 1
        return embed(self, *args, **kwargs)

    LocalModel._embed = counting_embed  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    for name, description in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    _count_processes()
    _count_generations()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "redis_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)
        if not any(item.get_closest_marker(tier) for tier in TIERS if tier != "unit"):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Start each test's count afresh (module fixtures count towards the first test using them)."""
    activity.reset()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    result = yield
    processes, generations = activity.reset()
    may_start = any(item.get_closest_marker(mark) for mark in ("process", "redis", "browser"))
    missing = [mark for mark, seen, allowed in (("process", processes, may_start),
                                                ("model", generations, bool(item.get_closest_marker("model"))))
               if seen and not allowed]
    if missing:
        pytest.fail(f"this test started {processes} subprocess(es) and ran the model {generations} time(s) "
                    f"without the tier mark(s) {', '.join(missing)}: add them to the module's pytestmark "
                    f"(tests/support/tiers.py)", pytrace=False)
    return result
