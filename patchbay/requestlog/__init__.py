"""The request log: every exchange from the CLI, the server and (when enabled) the library, in SQLite.

Each exchange is kept with its time, conversation, provider and model, the messages sent, the
text received, finish reason, usage, latency, time to first token, error and the fallbacks taken.
Keys, auth codes and cookies are never stored: every text is redacted on its way in.

The file is ``$PATCHBAY_HOME/logs.db`` when ``PATCHBAY_HOME`` is set, else
``$XDG_DATA_HOME/patchbay/logs.db`` (``~/.local/share/patchbay/logs.db``). The server and the
CLI log by default (``request_log = false`` in the config, or ``--no-log``, turns it off); the
library only when asked, with :func:`enable` or ``PATCHBAY_REQUEST_LOG=1``::

    import patchbay.requestlog
    patchbay.requestlog.enable()          # patchbay.Client / AsyncClient now record their exchanges
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from patchbay.paths import data_dir
from patchbay.requestlog.store import Exchange, ProviderCheck, RequestLog, Spend, describe_error

__all__ = [
    "Exchange",
    "ProviderCheck",
    "RequestLog",
    "Spend",
    "active",
    "default_path",
    "describe_error",
    "disable",
    "enable",
    "log_path",
]

ENABLE_ENV = "PATCHBAY_REQUEST_LOG"
PATH_ENV = "PATCHBAY_REQUEST_LOG_PATH"
_TRUE = frozenset({"1", "true", "yes", "on"})

_lock = threading.Lock()
_active: RequestLog | None = None


def default_path() -> Path:
    """The request log's default file, ``logs.db`` in :func:`data_dir`."""
    return data_dir() / "logs.db"


def log_path(configured: str | Path | None = None) -> Path:
    """``configured`` (the ``request_log_path`` option) when given, else :func:`default_path`."""
    return Path(configured).expanduser() if configured else default_path()


def enable(path: str | Path | None = None) -> RequestLog:
    """Record the library's exchanges (``patchbay.Client``/``AsyncClient``) in ``path`` from now on."""
    global _active
    with _lock:
        if _active is not None:
            _active.close()
        _active = RequestLog(log_path(path or os.environ.get(PATH_ENV)))
        return _active


def disable() -> None:
    """Stop recording the library's exchanges (what is queued is written first)."""
    global _active
    with _lock:
        current, _active = _active, None
    if current is not None:
        current.close()


def active() -> RequestLog | None:
    """The log the library records into: the one :func:`enable` opened, or, when
    ``PATCHBAY_REQUEST_LOG`` is true, one opened on first use; otherwise None."""
    global _active
    current = _active
    if current is None and os.environ.get(ENABLE_ENV, "").strip().lower() in _TRUE:
        with _lock:
            if _active is None:
                _active = RequestLog(log_path(os.environ.get(PATH_ENV)))
            current = _active
    return current
