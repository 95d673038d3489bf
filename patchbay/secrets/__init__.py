"""Keep credentials out of logs, errors and the request log.

Every credential patchbay handles (API keys, auth codes, cookies) is registered here the moment
it is read, and :func:`redact` replaces each registered value in any text before that text is
shown. Errors run their message through it, and :class:`RedactingFilter` does the same for log
records, so a secret that slips into an upstream error body still never reaches the user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

__all__ = ["RedactingFilter", "fingerprint", "mask", "redact", "redact_json", "register_secret", "write_private_json"]

_MIN_LENGTH = 4  # shorter values are too likely to occur in ordinary text
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register_secret(value: str | None) -> None:
    """Remember ``value`` as a secret so :func:`redact` hides it from now on."""
    global _secrets
    if not value or len(value) < _MIN_LENGTH:
        return
    with _lock:
        _secrets = _secrets | {value}


def mask(value: str) -> str:
    """A short recognisable form of a secret: ``sk-a…7f`` (never more than 4 characters)."""
    if len(value) <= 8:
        return "…"
    return f"{value[:3]}…{value[-2:]}"


def fingerprint(secret: str) -> str:
    """A stable, non-reversible id for a secret (16 hex digits of its SHA-256), for shared state."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    secrets = _secrets
    if not secrets:
        return text
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return text


def redact_json(text: str) -> str:
    """``text``, a JSON document, with every registered secret replaced by ``[REDACTED]``, also
    where JSON escaping changed how the secret is written (a quote or backslash in it)."""
    secrets = _secrets
    if not secrets:
        return text
    for secret in sorted(secrets, key=len, reverse=True):
        for form in {secret, json.dumps(secret, ensure_ascii=False)[1:-1]}:
            if form in text:
                text = text.replace(form, "[REDACTED]")
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets from every record: the message, and the traceback
    of ``log.exception`` (an exception's text may quote a key)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set, so the redacted traceback is what gets written.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def write_private_json(path: Path, document: object) -> None:
    """Write ``document`` as JSON to ``path``, replaced atomically: created 0600 in a 0700
    directory, it never exists with wider permissions nor half written (stored keys, cookies)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # a directory made before, by an older version or by hand
        os.chmod(path.parent, 0o700)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".json", dir=path.parent)  # 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2, sort_keys=True, ensure_ascii=False)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
