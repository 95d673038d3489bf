"""Run the ``patchbay`` command line as a real subprocess, in a home directory of its own.

    cli = CLI(tmp_path)
    cli.configure({"providers": {...}, "routes": {...}})   # written as $PATCHBAY_HOME/config.toml
    result = cli.run("chat", "Hello", input="")
    with cli.log() as log: ...                             # the request log it wrote
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from patchbay.requestlog import RequestLog
from patchbay.settings import to_toml

#: Seconds a command may take: generous, so that a machine busy with other work (a test run
#: beside, a compiler) still finishes in time; a hung command fails the test after this long.
RUN_TIMEOUT = 120.0


class CLI:
    """``python -m patchbay`` with ``PATCHBAY_HOME``, ``HOME`` and the XDG directories under ``tmp_path``."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.home = tmp_path / "home"
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith("PATCHBAY_") and not k.lower().endswith("_proxy")}
        self.env = {**inherited, "PATCHBAY_HOME": str(self.home), "HOME": str(tmp_path),
                    "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
                    "COLUMNS": "200", **env}
        self.cwd = tmp_path

    @property
    def log_path(self) -> Path:
        return self.home / "logs.db"

    def configure(self, config: dict[str, Any]) -> Path:
        """Write ``config`` as the default config file."""
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "config.toml"
        path.write_text(to_toml(config), encoding="utf-8")
        return path

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "patchbay", *args]

    def run(self, *args: str, input: str | None = "", timeout: float = RUN_TIMEOUT,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run to completion; stdin is ``input`` (a pipe, so never a terminal)."""
        return subprocess.run(self.command(*args), input=input, capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=self.cwd)

    def log(self) -> RequestLog:
        return RequestLog(self.log_path)
