"""Secrets stay out of log output, including exception tracebacks."""

from __future__ import annotations

import io
import logging

from patchbay.redact import RedactingFilter, register_secret

SECRET = "sk-test-traceback-7c1e95"


def test_log_exception_tracebacks_are_redacted() -> None:
    register_secret(SECRET)
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("patchbay.test_secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"upstream rejected key {SECRET}")
        except ValueError:
            logger.exception("request failed with %s", SECRET)
    finally:
        logger.removeHandler(handler)
    text = output.getvalue()
    assert "ValueError: upstream rejected key [REDACTED]" in text
    assert "request failed with [REDACTED]" in text
    assert SECRET not in text
