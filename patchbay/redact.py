"""Keep credentials out of logs, errors and the request log.

Every credential patchbay handles (API keys, auth codes, cookies) is registered here the moment
it is read, and :func:`redact` replaces each registered value in any text before that text is
shown. Errors run their message through it, and :class:`RedactingFilter` does the same for log
records, so a secret that slips into an upstream error body still never reaches the user.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import urllib.parse

__all__ = ["RedactingFilter", "clip", "encoded_forms", "fingerprint", "mask", "redact", "redact_json",
           "register_secret"]

_MIN_LENGTH = 4  # shorter values are too likely to occur in ordinary text
_MIN_BASE64 = 6  # a base64 middle shorter than this is too likely to occur by chance
_REDACTED = "[REDACTED]"
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_forms: tuple[str, ...] = ()  # every registered value and its encoded forms, longest first


def _base64_middles(data: bytes) -> set[str]:
    """The base64 characters that encode only ``data`` wherever it sits in a longer byte string.

    Base64 writes 3 bytes as 4 characters, so embedded data starts at one of 3 alignments; for
    each, the characters whose 6 bits all come from ``data`` (not from its unknown neighbours)
    are the same in any encoding of a text containing it. Any base64 (standard or URL-safe) of
    such a text therefore contains one of these middles."""
    middles: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data + bytes(3)).decode("ascii")
        # character i holds bits 6i..6i+5, i.e. bytes 6i//8 .. (6i+5)//8 of the padded string
        stable = [i for i in range(len(encoded)) if 6 * i // 8 >= offset and (6 * i + 5) // 8 < offset + len(data)]
        if stable:
            middle = encoded[stable[0]:stable[-1] + 1]
            if len(middle) >= _MIN_BASE64:
                middles.add(middle)
                middles.add(middle.translate(_URLSAFE))
    return middles


_URLSAFE = str.maketrans("+/", "-_")


def encoded_forms(value: str) -> set[str]:
    """``value`` and the forms it takes when echoed back encoded: URL-quoted (``quote`` with and
    without ``/`` safe, ``quote_plus``), JSON-escaped (ASCII or not) and base64 (the stable
    middles, standard and URL-safe), so an upstream that quotes a key in any of them is redacted."""
    forms = {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),
        urllib.parse.quote_plus(value),
        urllib.parse.quote_plus(value, safe="/"),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    forms |= _base64_middles(value.encode("utf-8"))
    return {form for form in forms if len(form) >= _MIN_LENGTH}


def register_secret(value: str | None) -> None:
    """Remember ``value`` as a secret so :func:`redact` hides it, and its encoded forms, from now on."""
    global _secrets, _forms
    if not value or len(value) < _MIN_LENGTH:
        return
    with _lock:
        if value in _secrets:
            return
        forms = set(_forms) | encoded_forms(value)
        _secrets = _secrets | {value}
        _forms = tuple(sorted(forms, key=lambda form: (-len(form), form)))


def mask(value: str) -> str:
    """A short recognisable form of a secret: ``sk-a…7f`` (never more than 4 characters)."""
    if len(value) <= 8:
        return "…"
    return f"{value[:3]}…{value[-2:]}"


def fingerprint(secret: str) -> str:
    """A stable, non-reversible id for a secret (16 hex digits of its SHA-256), for shared state."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


def redact(text: str) -> str:
    """``text`` with every registered secret, in any of its :func:`encoded_forms`, replaced by
    ``[REDACTED]``. Overlapping occurrences are hidden together, so no piece of one survives."""
    forms = _forms
    if not forms:
        return text
    spans: list[tuple[int, int]] = []
    for form in forms:  # one C-level substring search each: fast on the common text with no secret
        start = text.find(form)
        while start >= 0:
            spans.append((start, start + len(form)))
            start = text.find(form, start + 1)
    if not spans:
        return text
    spans.sort()
    pieces: list[str] = []
    done = 0
    end = -1
    for start, stop in spans:
        if start > end:  # a new run of hidden text
            if end >= 0:
                pieces.append(_REDACTED)
            pieces.append(text[done:start])
            end = stop
        else:
            end = max(end, stop)
        done = end
    pieces.append(_REDACTED)
    pieces.append(text[done:])
    return "".join(pieces)


def redact_json(text: str) -> str:
    """``text``, a JSON document, with every registered secret replaced by ``[REDACTED]``, also
    where JSON escaping changed how the secret is written (the escaped form is registered too)."""
    return redact(text)


def clip(text: str, limit: int, *, marker: str = "…") -> str:
    """``text`` redacted, then cut to at most ``limit`` characters (ending in ``marker`` when cut).

    Redacting first is the point: a secret straddling the cut is whole when redaction sees it,
    where cutting first would leave a prefix that no longer matches and leaks."""
    text = redact(text)
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[:max(limit, 0)]
    return text[:limit - len(marker)] + marker


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
