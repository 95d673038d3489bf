"""The one error hierarchy of patchbay.

Every failure a caller can see is a :class:`PatchbayError`. Each class knows the HTTP status
and the OpenAI-style ``error.type`` it maps to (one table, :data:`ERROR_TABLE`, looked up along
the class hierarchy), so the server, the CLI and the router all agree on what an error means.

    PatchbayError
    ├── InvalidRequest              400  a request that would fail anywhere
    │   ├── ModelNotSupported       404  the provider does not serve that model
    │   ├── ContextTooLong          400  the conversation does not fit the model
    │   ├── UnsupportedFeature      400  no target can honour a feature asked for (images, tools...)
    │   ├── PayloadTooLarge         413  a request body over the server's limit
    │   ├── EndpointNotFound        404  no such path on the server
    │   ├── ResourceNotFound        404  no such object (a stored response...) at a valid path
    │   └── MethodNotAllowed        405  the path exists, the method does not
    ├── AuthError                   401  credentials missing, invalid or rejected
    │   └── SessionRejected         401  the service answered with a captcha or an error page
    ├── PaymentRequired             402  the account is out of credits
    ├── PermissionDenied            403  credentials valid, access refused
    │   └── ChallengeRequired       403  a browser challenge (Cloudflare...) stands in the way
    ├── RateLimited                 429  too many requests (``retry_after`` when known)
    │   └── ClientRateLimited       429  a client over the gateway's own limits (``limit`` names which)
    │       └── BudgetExceeded      429  a client over its spend budget (code ``budget_exceeded``)
    ├── ProviderNotWorking          503  the provider is marked not working or is disabled
    ├── UpstreamError               502  the service failed (5xx and other statuses)
    │   ├── ProtocolError           502  the reply broke the wire protocol
    │   └── ConnectionFailed        502  connect error, reset or disconnect
    ├── RequestTimeout              504  a wait ran past its limit
    │   ├── ConnectTimeout          504
    │   ├── FirstByteTimeout        504
    │   ├── IdleTimeout             504  a stall between two chunks
    │   └── DeadlineExceeded        504  the whole request ran past its total deadline
    ├── StreamInterrupted           502  failed after partial output (carries ``partial_text``)
    └── AllProvidersFailed          502  every target of a route failed (carries ``attempts``);
                                         429 if all were rate limited, 401 if all were auth
                                         failures, 504 if all timed out, 503 if none could
                                         be tried

Context (provider, model) is attached in one place, :meth:`PatchbayError.with_context`, by the
provider base class. Messages never contain secrets: :func:`patchbay.redact.redact` runs on
every message when the error is made (so ``error.message`` is safe to log) and again when it is
shown (for secrets registered in between).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from patchbay.redact import redact

__all__ = [
    "ERROR_TABLE",
    "AllProvidersFailed",
    "Attempt",
    "AuthError",
    "BudgetExceeded",
    "ChallengeRequired",
    "ClientRateLimited",
    "ConnectTimeout",
    "ConnectionFailed",
    "ContextTooLong",
    "UnsupportedFeature",
    "DeadlineExceeded",
    "EndpointNotFound",
    "ResourceNotFound",
    "ErrorInfo",
    "FirstByteTimeout",
    "IdleTimeout",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotSupported",
    "PatchbayError",
    "PayloadTooLarge",
    "PaymentRequired",
    "PermissionDenied",
    "ProtocolError",
    "ProviderNotWorking",
    "RateLimited",
    "SessionRejected",
    "StreamInterrupted",
    "RequestTimeout",
    "UpstreamError",
    "error_for_status",
    "error_info",
]


class PatchbayError(Exception):
    """Base class of every error patchbay raises on purpose."""

    #: The target that raised it cools down at once, not after a run of failures (the router's
    #: policy): retrying cannot help until someone acts (a browser challenge).
    cools_down_at_once: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        param: str | None = None,
    ) -> None:
        message = redact(message)  # secrets known now; __str__ redacts again for later ones
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.upstream_status = status
        self.param = param

    @property
    def status(self) -> int:
        """The HTTP status this error maps to (from :data:`ERROR_TABLE`)."""
        return error_info(type(self)).status

    @property
    def type(self) -> str:
        """The OpenAI-style ``error.type`` this error maps to."""
        return error_info(type(self)).type

    @property
    def code(self) -> str:
        """A short machine-readable code (``error.code`` in the OpenAI error object)."""
        return error_info(type(self)).code

    def with_context(self, *, provider: str | None = None, model: str | None = None) -> PatchbayError:
        """Fill in the provider and model where not set yet; returns ``self``."""
        if self.provider is None:
            self.provider = provider
        if self.model is None:
            self.model = model
        return self

    def __str__(self) -> str:
        prefix = f"{self.provider}: " if self.provider else ""
        return redact(prefix + self.message)

    def to_dict(self) -> dict[str, object]:
        """The OpenAI-style error object: ``{"message", "type", "param", "code"}``."""
        return {"message": str(self), "type": self.type, "param": self.param, "code": self.code}


class InvalidRequest(PatchbayError):
    """The request is malformed or cannot be served by any provider as it stands."""


class ModelNotSupported(InvalidRequest):
    """The provider does not serve the requested model; the message lists the valid names."""


class ContextTooLong(InvalidRequest):
    """The conversation does not fit the model's context even after trimming."""

    def __init__(self, message: str, *, limit: int | None = None, size: int | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.limit = limit
        self.size = size


class UnsupportedFeature(InvalidRequest):
    """The request asks for a feature (images, tools, JSON output, n > 1...) that the provider, or
    every target of the route, cannot honour; ``param`` names the field that asks for it."""


class PayloadTooLarge(InvalidRequest):
    """The request body is over the server's size limit."""


class EndpointNotFound(InvalidRequest):
    """The server has no endpoint at that path."""


class ResourceNotFound(InvalidRequest):
    """The path is valid, the object it names (a stored response...) does not exist."""


class MethodNotAllowed(InvalidRequest):
    """The endpoint exists but does not take that HTTP method."""


class AuthError(PatchbayError):
    """Credentials are missing, invalid or were rejected by the service."""


class SessionRejected(AuthError):
    """The service answered with a captcha page or an error body instead of an answer."""


class PaymentRequired(PatchbayError):
    """The account behind the credentials is out of credits."""


class PermissionDenied(PatchbayError):
    """The credentials are valid but not allowed to do this."""


class ChallengeRequired(PermissionDenied):
    """The site answered with a browser challenge (Cloudflare's "Just a moment..." page and the like).

    Retrying cannot help until the user supplies a real browser's cookies, so the target cools
    down at once (:attr:`cools_down_at_once`) and the router moves on."""

    cools_down_at_once: ClassVar[bool] = True


class RateLimited(PatchbayError):
    """The service refused the request for now; ``retry_after`` seconds when it said so."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ClientRateLimited(RateLimited):
    """A client (API key) is over one of the gateway's own limits; ``limit`` names which."""

    def __init__(self, message: str, *, limit: str, retry_after: float, **kw: object) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.limit = limit


class BudgetExceeded(ClientRateLimited):
    """A client (API key) has spent its budget (``limit`` is ``budget_usd_per_day``): the same 429,
    with its own code, so a client can tell a wait of hours from one of seconds."""


class ProviderNotWorking(PatchbayError):
    """The provider is marked not working or disabled, and was not asked for by name."""


class UpstreamError(PatchbayError):
    """The service failed: a 5xx status or another status patchbay has no better class for."""


class ProtocolError(UpstreamError):
    """The reply broke the wire protocol (malformed stream, wrong content, oversized line)."""


class ConnectionFailed(UpstreamError):
    """The connection could not be made, or was reset or closed early."""


class RequestTimeout(PatchbayError):
    """A wait ran past its limit."""


class ConnectTimeout(RequestTimeout):
    """Connecting to the service took too long."""


class FirstByteTimeout(RequestTimeout):
    """The service accepted the request but sent nothing back in time."""


class IdleTimeout(RequestTimeout):
    """The stream stalled: the gap between two chunks ran past the idle timeout."""


class DeadlineExceeded(RequestTimeout):
    """The whole request ran past its total deadline."""


class StreamInterrupted(PatchbayError):
    """The stream failed after part of the answer was delivered; nothing is sent twice.

    ``partial_text`` is exactly what the caller already received; ``__cause__`` says why.
    """

    def __init__(self, message: str, *, partial_text: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.partial_text = partial_text


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed try of one target, as reported in :class:`AllProvidersFailed`."""

    provider: str
    model: str
    error: str  # the error's class name
    status: int
    message: str
    retry_after: float | None = None  # seconds, when the target said when to come back
    skipped: bool = False  # not tried: it cannot honour the request (``message`` says why)

    @classmethod
    def of(cls, error: PatchbayError, provider: str, model: str, *, skipped: bool = False) -> Attempt:
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        return cls(provider, model, type(error).__name__, error.status, error.message, retry_after, skipped)


class AllProvidersFailed(PatchbayError):
    """Every target of a route failed; ``attempts`` says what each one answered."""

    def __init__(self, attempts: list[Attempt], *, model: str | None = None, note: str = "",
                 status: int | None = None) -> None:
        lines = "; ".join(f"{a.provider}/{a.model}: {'skipped' if a.skipped else a.error} ({a.status}): {a.message}"
                          for a in attempts)
        summary = f"all providers failed for {model!r}" if model else "all providers failed"
        super().__init__(f"{summary}{note}: {lines or 'no target could be tried'}", model=model)
        self.attempts = list(attempts)
        self._status = status  # the last target's status, when its error decided for all

    @property
    def retry_after(self) -> float | None:
        """When every attempt was rate limited: the soonest time any target said to come back."""
        if self.status != 429:
            return None
        waits = [a.retry_after for a in self.attempts if a.retry_after is not None]
        return min(waits) if waits else None

    @property
    def status(self) -> int:
        """The decisive error's status when one was given (a request the last target found
        invalid); else, over the targets tried, 429 when every attempt was rate limited, 401 when
        every one was an auth failure, 504 when every one timed out, 503 when none could be
        made, else 502."""
        if self._status is not None:
            return self._status
        tried = [a for a in self.attempts if not a.skipped]
        if not tried:
            return 503
        statuses = {a.status for a in tried}
        if len(statuses) == 1 and (only := statuses.pop()) in (401, 429, 504):
            return only
        return 502

    @property
    def type(self) -> str:
        return {429: "rate_limit_error", 401: "authentication_error", 504: "timeout_error",
                400: "invalid_request_error"}.get(self.status, "api_error")

    def to_dict(self) -> dict[str, object]:
        """The OpenAI error object plus ``attempts``: what each target answered, for people to read."""
        body = super().to_dict()
        body["attempts"] = [{"provider": a.provider, "model": a.model, "error": a.error, "status": a.status,
                             "message": redact(a.message), "skipped": a.skipped} for a in self.attempts]
        return body


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """How one error class is shown over HTTP."""

    status: int
    type: str
    code: str


#: patchbay error class -> HTTP status and OpenAI-style type. Looked up along the MRO, so a
#: subclass without its own row inherits its parent's. A test checks every class has a row.
ERROR_TABLE: dict[type[PatchbayError], ErrorInfo] = {
    PatchbayError: ErrorInfo(500, "api_error", "internal_error"),
    InvalidRequest: ErrorInfo(400, "invalid_request_error", "invalid_request"),
    ModelNotSupported: ErrorInfo(404, "invalid_request_error", "model_not_found"),
    ContextTooLong: ErrorInfo(400, "invalid_request_error", "context_length_exceeded"),
    UnsupportedFeature: ErrorInfo(400, "invalid_request_error", "unsupported_feature"),
    PayloadTooLarge: ErrorInfo(413, "invalid_request_error", "payload_too_large"),
    EndpointNotFound: ErrorInfo(404, "invalid_request_error", "not_found"),
    ResourceNotFound: ErrorInfo(404, "invalid_request_error", "not_found"),
    MethodNotAllowed: ErrorInfo(405, "invalid_request_error", "method_not_allowed"),
    AuthError: ErrorInfo(401, "authentication_error", "invalid_api_key"),
    SessionRejected: ErrorInfo(401, "authentication_error", "session_rejected"),
    PaymentRequired: ErrorInfo(402, "insufficient_quota", "payment_required"),
    PermissionDenied: ErrorInfo(403, "permission_error", "permission_denied"),
    ChallengeRequired: ErrorInfo(403, "permission_error", "challenge_required"),
    RateLimited: ErrorInfo(429, "rate_limit_error", "rate_limit_exceeded"),
    ClientRateLimited: ErrorInfo(429, "rate_limit_error", "rate_limit_exceeded"),
    BudgetExceeded: ErrorInfo(429, "rate_limit_error", "budget_exceeded"),
    ProviderNotWorking: ErrorInfo(503, "api_error", "provider_not_working"),
    UpstreamError: ErrorInfo(502, "api_error", "upstream_error"),
    ProtocolError: ErrorInfo(502, "api_error", "protocol_error"),
    ConnectionFailed: ErrorInfo(502, "api_error", "connection_failed"),
    RequestTimeout: ErrorInfo(504, "timeout_error", "timeout"),
    ConnectTimeout: ErrorInfo(504, "timeout_error", "connect_timeout"),
    FirstByteTimeout: ErrorInfo(504, "timeout_error", "first_byte_timeout"),
    IdleTimeout: ErrorInfo(504, "timeout_error", "idle_timeout"),
    DeadlineExceeded: ErrorInfo(504, "timeout_error", "deadline_exceeded"),
    StreamInterrupted: ErrorInfo(502, "api_error", "stream_interrupted"),
    AllProvidersFailed: ErrorInfo(502, "api_error", "all_providers_failed"),
}


def error_info(cls: type[PatchbayError]) -> ErrorInfo:
    """The table row for ``cls`` or its nearest ancestor."""
    for klass in cls.__mro__:
        info = ERROR_TABLE.get(klass)  # type: ignore[arg-type]
        if info is not None:
            return info
    raise KeyError(cls)  # unreachable: PatchbayError has a row


#: Upstream HTTP status -> patchbay error class. Statuses not listed map by range (5xx and
#: anything else unexpected -> UpstreamError).
STATUS_ERRORS: dict[int, type[PatchbayError]] = {
    400: InvalidRequest,
    401: AuthError,
    402: PaymentRequired,
    403: PermissionDenied,
    404: ModelNotSupported,
    409: UpstreamError,
    413: ContextTooLong,
    422: InvalidRequest,
    429: RateLimited,
}


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str | None = None,
    model: str | None = None,
    retry_after: float | None = None,
) -> PatchbayError:
    """Map an upstream HTTP status (and its message) onto the hierarchy."""
    cls = STATUS_ERRORS.get(status, UpstreamError)
    text = f"upstream answered {status}: {message}" if message else f"upstream answered {status}"
    if cls is RateLimited:
        return RateLimited(text, retry_after=retry_after, provider=provider, model=model, status=status)
    return cls(text, provider=provider, model=model, status=status)
