"""Suite-wide fixtures: the replica servers (tests/replicas) for every test module."""

from __future__ import annotations

pytest_plugins = ["tests.replicas.fixtures", "tests.replicas.proxy"]
