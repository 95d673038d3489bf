"""Suite-wide fixtures: replica servers and proxies (tests/replicas), a real redis-server, the
test tiers (tests/support/tiers.py), and the check of every answer patchbay's server gives the tests'
clients against OpenAI's published schemas (tests/support/openai_schema.py)."""

from __future__ import annotations

pytest_plugins = [
    "tests.replicas.fixtures",
    "tests.replicas.proxy",
    "tests.support.redis_server",
    "tests.support.tiers",
    "tests.support.openai_schema",
]

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from patchbay.providers import Liaobots  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty ``$PATCHBAY_HOME`` (stored keys, imported cookies, config),
    so nothing a developer keeps in ~/.config/patchbay leaks into a run."""
    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path_factory.mktemp("patchbay-home")))


@pytest.fixture
def clean_liaobots() -> Iterator[None]:
    """Liaobots' shared auth codes and session cookies, empty before and after the test (each
    test's replica issues its own)."""
    Liaobots.auth_codes.clear()
    Liaobots.cookies.clear()
    yield
    Liaobots.auth_codes.clear()
    Liaobots.cookies.clear()
