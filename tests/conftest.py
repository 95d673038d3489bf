"""Suite-wide fixtures: replica servers and proxies (tests/replicas), a real redis-server, and the
test tiers (tests/tiers.py)."""

from __future__ import annotations

pytest_plugins = ["tests.replicas.fixtures", "tests.replicas.proxy", "tests.redis_server", "tests.tiers"]

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own empty ``$PATCHBAY_HOME`` (stored keys, imported cookies, config),
    so nothing a developer keeps in ~/.config/patchbay leaks into a run."""
    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path_factory.mktemp("patchbay-home")))
