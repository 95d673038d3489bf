from __future__ import annotations

import pytest

import patchbay.errors as errors_module
from patchbay.errors import (
    ERROR_TABLE,
    AuthError,
    ContextTooLong,
    InvalidRequest,
    ModelNotSupported,
    PatchbayError,
    PaymentRequired,
    PermissionDenied,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
    error_for_status,
)
from patchbay.redact import register_secret


def all_error_classes() -> list[type[PatchbayError]]:
    return [
        obj for obj in vars(errors_module).values()
        if isinstance(obj, type) and issubclass(obj, PatchbayError)
    ]


def test_every_error_class_has_its_own_row() -> None:
    missing = [cls.__name__ for cls in all_error_classes() if cls not in ERROR_TABLE]
    assert missing == []


def test_every_error_class_is_exported() -> None:
    names = {cls.__name__ for cls in all_error_classes()}
    assert names <= set(errors_module.__all__)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, InvalidRequest), (401, AuthError), (402, PaymentRequired), (403, PermissionDenied),
     (404, ModelNotSupported), (409, UpstreamError), (422, InvalidRequest), (429, RateLimited),
     (500, UpstreamError), (502, UpstreamError), (503, UpstreamError), (418, UpstreamError)],
)
def test_upstream_status_maps_to_one_class(status: int, cls: type[PatchbayError]) -> None:
    error = error_for_status(status, "boom", provider="P", model="m")
    assert type(error) is cls
    assert error.upstream_status == status
    assert str(error) == f"P: upstream answered {status}: boom"


def test_rate_limit_keeps_retry_after() -> None:
    error = error_for_status(429, "slow down", retry_after=7.5)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.5
    assert (error.status, error.type) == (429, "rate_limit_error")


def test_subclass_status_comes_from_the_table() -> None:
    assert ModelNotSupported("x").status == 404
    assert ContextTooLong("x").status == 400
    assert StreamInterrupted("x", partial_text="ab").status == 502


def test_context_is_filled_once() -> None:
    error = AuthError("bad").with_context(provider="A", model="m1")
    error.with_context(provider="B", model="m2")
    assert (error.provider, error.model) == ("A", "m1")


def test_secret_never_appears_in_message_or_dict() -> None:
    register_secret("sk-test-very-secret-123")
    error = AuthError("upstream said: key sk-test-very-secret-123 is invalid", provider="P")
    assert "sk-test-very-secret-123" not in str(error)
    assert "sk-test-very-secret-123" not in str(error.to_dict())
    assert "[REDACTED]" in str(error)


def test_openai_error_object_shape() -> None:
    error = InvalidRequest("messages[0].role is wrong", param="messages[0].role")
    assert error.to_dict() == {
        "message": "messages[0].role is wrong",
        "type": "invalid_request_error",
        "param": "messages[0].role",
        "code": "invalid_request",
    }


def test_message_attribute_is_already_redacted_for_logging() -> None:
    register_secret("auth-code-for-logs-42")
    error = AuthError("rejected code auth-code-for-logs-42")
    assert "auth-code-for-logs-42" not in error.message
    assert "auth-code-for-logs-42" not in repr(error.args)
