"""Every ```python block of README.md runs as written, as a script of its own, against the replicas.

The README's examples name replicas at fixed ports (8080 Liaobots, 8081 first-generation Liaobots,
8082 AiChatOnline). Here the replicas run on free ports and each block's addresses are rewritten to
them; nothing else of the block changes. The scripts run in a temporary home (``HOME``,
``PATCHBAY_HOME``, the XDG directories) with no proxies or service keys in the environment, and a
``sitecustomize`` refuses (and records) any connection or name lookup that is not loopback, so an
example that would reach the internet fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.test_docs import ROOT, Block, python_blocks
from tests.replicas import DEFAULT_ANSWER, AiChatOnlineReplica, LiaobotsLegacyReplica, LiaobotsReplica, ReplicaServer
from tests.replicas.threaded import threaded

pytestmark = [pytest.mark.process, pytest.mark.model]

RUN_TIMEOUT = 180.0
#: The README's replica addresses -> the replica that answers there.
README_REPLICAS: dict[str, type[ReplicaServer]] = {
    "127.0.0.1:8080": LiaobotsReplica,
    "127.0.0.1:8081": LiaobotsLegacyReplica,
    "127.0.0.1:8082": AiChatOnlineReplica,
}
ADDRESS = re.compile("|".join(re.escape(address) for address in README_REPLICAS))
#: Environment variables a script must not inherit: they would point it at other services or files.
DROPPED = re.compile(r"PATCHBAY_.*|.*_PROXY|.*_API_KEYS?|LIAOBOTS_AUTH_CODES|PYTHONPATH|PYTHONSTARTUP", re.I)

#: Loaded first by every script: no connection and no name lookup beyond loopback.
GUARD = '''
import ipaddress
import os
import socket

_BLOCKED = os.environ["README_EXAMPLE_BLOCKED"]


def _loopback(host):
    if host is None or host == "localhost":
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(host):
    with open(_BLOCKED, "a", encoding="utf-8") as file:
        file.write(f"{host}\\n")
    raise OSError(f"README example tried to reach {host!r}, which is not loopback")


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def getaddrinfo(host, *args, **kwargs):
    if not _loopback(host):
        _refuse(host)
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse(address[0])
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse(address[0])
    return _connect_ex(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
'''


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, ReplicaServer]]:
    """The README's replicas, each on a free port of its own loop: README address -> replica."""
    started: dict[str, ReplicaServer] = {}
    with (
        threaded(LiaobotsReplica()) as liaobots,
        threaded(LiaobotsLegacyReplica()) as legacy,
        threaded(AiChatOnlineReplica()) as aichatonline,
    ):
        for replica in (liaobots, legacy, aichatonline):
            address = next(a for a, cls in README_REPLICAS.items() if isinstance(replica, cls))
            started[address] = replica
        yield started


def rewrite(code: str, replicas: dict[str, ReplicaServer]) -> str:
    """``code`` with each README replica address replaced by the running replica's (in one pass)."""
    def actual(match: re.Match[str]) -> str:
        base_url = replicas[match.group(0)].base_url
        assert base_url is not None
        return base_url.removeprefix("http://")

    return ADDRESS.sub(actual, code)


def script_env(tmp_path: Path, guard: Path, blocked: Path) -> dict[str, str]:
    inherited = {key: value for key, value in os.environ.items() if not DROPPED.fullmatch(key)}
    return {
        **inherited,
        "HOME": str(tmp_path / "home"),
        "PATCHBAY_HOME": str(tmp_path / "patchbay"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PYTHONPATH": os.pathsep.join([str(guard), str(ROOT)]),
        "PYTHONIOENCODING": "utf-8",
        "README_EXAMPLE_BLOCKED": str(blocked),
    }


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: f"README-line-{block.line}")
def test_readme_python_block_runs(block: Block, replicas: dict[str, ReplicaServer], tmp_path: Path) -> None:
    code = rewrite(block.code, replicas)
    compile(code, f"README.md:{block.line}", "exec")  # fast: a top-level await fails here, unrun
    used = [replicas[address] for address in README_REPLICAS if address in block.code]
    before = {id(replica): (len(replica.requests), len(replica.violations)) for replica in used}
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD, encoding="utf-8")
    blocked = tmp_path / "blocked.txt"
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()

    result = subprocess.run([sys.executable, str(script)], cwd=work, env=script_env(tmp_path, guard, blocked),
                            capture_output=True, text=True, encoding="utf-8", errors="replace",
                            timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)

    where = f"README.md's block at line {block.line}"
    assert not blocked.exists(), f"{where} tried to leave loopback: {blocked.read_text(encoding='utf-8')}"
    assert result.returncode == 0, f"{where} exited {result.returncode}:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, f"{where} printed a traceback:\n{result.stderr[-4000:]}"
    if "print(" in block.code:
        assert result.stdout.strip(), f"{where} printed nothing"
    for replica in used:
        requests, violations = before[id(replica)]
        assert len(replica.requests) > requests, f"{where} never reached {type(replica).__name__}"
        assert replica.violations[violations:] == [], f"{where} sent {type(replica).__name__} malformed requests"
    if used:
        assert DEFAULT_ANSWER in result.stdout, f"{where} did not print the replica's answer: {result.stdout!r}"
