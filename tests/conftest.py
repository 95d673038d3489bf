"""Suite-wide fixtures: replica servers and proxies (tests/replicas), a real redis-server, and the
test tiers (tests/tiers.py)."""

from __future__ import annotations

pytest_plugins = ["tests.replicas.fixtures", "tests.replicas.proxy", "tests.redis_server", "tests.tiers"]
