"""patchbay: one streaming interface to many chat-model providers.

The public surface is listed in ``__all__``; everything else is an implementation detail.
"""

from __future__ import annotations

from patchbay.config import UNSET, Timeout
from patchbay.errors import (
    AllProvidersFailed,
    Attempt,
    AuthError,
    ConnectionFailed,
    ConnectTimeout,
    ContextTooLong,
    DeadlineExceeded,
    FirstByteTimeout,
    IdleTimeout,
    InvalidRequest,
    ModelNotSupported,
    PatchbayError,
    PaymentRequired,
    PermissionDenied,
    ProtocolError,
    ProviderNotWorking,
    RateLimited,
    RequestTimeout,
    SessionRejected,
    StreamInterrupted,
    UpstreamError,
)
from patchbay.events import (
    EventStream,
    Fallback,
    Finish,
    ProviderInfo,
    StreamConsumed,
    StreamEvent,
    TextDelta,
    TextStream,
    ToolCallDelta,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "UNSET",
    "AllProvidersFailed",
    "Attempt",
    "AuthError",
    "ConnectTimeout",
    "ConnectionFailed",
    "ContextTooLong",
    "DeadlineExceeded",
    "FirstByteTimeout",
    "IdleTimeout",
    "EventStream",
    "Fallback",
    "Finish",
    "InvalidRequest",
    "ModelNotSupported",
    "PatchbayError",
    "PaymentRequired",
    "PermissionDenied",
    "ProtocolError",
    "ProviderInfo",
    "ProviderNotWorking",
    "RateLimited",
    "SessionRejected",
    "StreamConsumed",
    "StreamEvent",
    "StreamInterrupted",
    "TextDelta",
    "TextStream",
    "RequestTimeout",
    "Timeout",
    "ToolCallDelta",
    "UpstreamError",
    "Usage",
    "__version__",
]
