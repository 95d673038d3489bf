"""Credential pools: several auth codes or API keys for one service, used in turn.

A pool holds credentials given by the user and ones fetched at run time. The current credential
is used until it is banned (rejected by the service); then the next one takes over. Every value
is registered with :mod:`patchbay.redact`, so it is redacted wherever it might be shown. A pool
reads its environment variable, or failing that the key stored under the variable's name
(:mod:`patchbay.secrets.store`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from patchbay.redact import fingerprint, mask, register_secret
from patchbay.secrets.store import stored_key

__all__ = ["CredentialPool"]


class CredentialPool:
    """An ordered set of credentials with a current one; rejected ones are banned."""

    def __init__(self, name: str, env_var: str | None = None) -> None:
        self.name = name
        self.env_var = env_var
        self._codes: list[str] = []
        self._banned: set[str] = set()
        self._banned_marks: set[str] = set()  # fingerprints banned elsewhere (shared state)
        self._lock = threading.Lock()
        self._env_loaded = False

    def add(self, values: str | Iterable[str] | None) -> None:
        """Add credentials (a comma-separated string or an iterable); known ones are kept once."""
        if values is None:
            return
        items = values.split(",") if isinstance(values, str) else list(values)
        with self._lock:
            for item in items:
                code = item.strip()
                if not code:
                    continue
                register_secret(code)
                if code not in self._codes:
                    self._codes.append(code)

    def load_env(self) -> None:
        """Add the comma-separated credentials in the pool's environment variable, once; when the
        variable is not set, the key stored under its name (``patchbay keys set NAME``)."""
        if self._env_loaded or not self.env_var:
            return
        self._env_loaded = True
        self.add(os.environ.get(self.env_var) or stored_key(self.env_var))

    def current(self) -> str | None:
        """The first credential not banned, or ``None`` when the pool is exhausted."""
        self.load_env()
        with self._lock:
            for code in self._codes:
                if code not in self._banned and fingerprint(code) not in self._banned_marks:
                    return code
        return None

    def ban(self, code: str) -> None:
        """Mark ``code`` as rejected; :meth:`current` moves on to the next one."""
        with self._lock:
            self._banned.add(code)

    def banned_fingerprints(self) -> set[str]:
        """Fingerprints of the banned credentials (safe to share: never the values)."""
        with self._lock:
            return {fingerprint(code) for code in self._banned}

    def apply_bans(self, fingerprints: set[str]) -> None:
        """Ban the credentials whose fingerprint is in ``fingerprints`` (bans made elsewhere),
        including ones added to the pool later."""
        with self._lock:
            self._banned_marks |= fingerprints

    def clear(self) -> None:
        with self._lock:
            self._codes.clear()
            self._banned.clear()
            self._banned_marks.clear()
            self._env_loaded = False

    def __len__(self) -> int:
        return len(self._codes)

    def __repr__(self) -> str:
        shown = ", ".join(mask(c) + (" (banned)" if c in self._banned else "") for c in self._codes)
        return f"CredentialPool({self.name!r}, [{shown}])"
