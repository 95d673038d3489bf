"""``patchbay serve`` as a real process on an ephemeral port, for the server tests.

    async with GatewayProcess(config, tmp_path, env={...}) as gateway:
        client = openai.AsyncOpenAI(base_url=gateway.api_base, api_key="...")

The config is a plain dict, written as a TOML file by :func:`patchbay.settings.to_toml`. The
process's log is collected (and kept draining) so tests can assert on it, e.g. that no secret
was logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from patchbay.settings import to_toml

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
_RUNNING = re.compile(r"running on http://([\d.]+):(\d+)")


class GatewayProcess:
    """One ``patchbay serve`` process; ``base_url`` and ``api_base`` once started."""

    #: The base URLs of the processes started and not stopped: what tests/support/openai_schema.py
    #: validates answers from (and not a fake upstream's).
    running: ClassVar[set[str]] = set()

    def __init__(self, config: dict[str, Any] | None, tmp_path: Path, *, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.config = config
        self.tmp_path = tmp_path
        self.env = env or {}
        self.args = args or []
        self.log: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self.base_url = ""
        self._drain: asyncio.Task[None] | None = None

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def log_text(self) -> str:
        return "".join(self.log)

    async def __aenter__(self) -> GatewayProcess:
        args = [sys.executable, "-m", "patchbay", "serve", "--port", "0", *self.args]
        if self.config is not None:
            path = self.tmp_path / "patchbay.toml"
            path.write_text(to_toml(self.config), encoding="utf-8")
            args += ["--config", str(path)]
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PATCHBAY_")}
        # No shutdown delay unless a test asks for one: a stop is then only uvicorn's own.
        env = {**inherited, "PATCHBAY_HOME": str(self.tmp_path / "home"), "PATCHBAY_SHUTDOWN_DELAY": "0", **self.env}
        self.process = await asyncio.create_subprocess_exec(
            *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
        try:
            await asyncio.wait_for(self._wait_started(), START_TIMEOUT)
            self._drain = asyncio.ensure_future(self._read_rest())
            await asyncio.wait_for(self._wait_ready(), START_TIMEOUT)
        except BaseException:
            await self.stop()
            raise RuntimeError(f"patchbay serve did not start:\n{self.log_text}") from None
        return self

    async def _wait_started(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while True:
            line = (await self.process.stdout.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError("the process exited")
            self.log.append(line)
            match = _RUNNING.search(line)
            if match:
                self.base_url = f"http://{match.group(1)}:{match.group(2)}"
                GatewayProcess.running.add(self.base_url)
                return

    async def _wait_ready(self) -> None:
        """Poll ``/ready`` until it answers 200: with workers, the socket is bound before they run."""
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{self.base_url}/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.02)  # the next poll; bounded by START_TIMEOUT

    async def _read_rest(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.log.append(line.decode(errors="replace"))

    async def stop(self) -> int | None:
        """Stop gracefully (SIGTERM to the process group), killing it after a timeout."""
        process = self.process
        if process is None:
            return None
        GatewayProcess.running.discard(self.base_url)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._drain, STOP_TIMEOUT)
        return process.returncode

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def children(self) -> list[int]:
        """Process ids of the server's direct children (the workers, with ``--workers``)."""
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []
