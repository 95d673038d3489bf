"""Suite-wide fixtures: replica servers and proxies (tests/replicas) and a real redis-server."""

from __future__ import annotations

pytest_plugins = ["tests.replicas.fixtures", "tests.replicas.proxy", "tests.redis_server"]
