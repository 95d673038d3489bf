"""patchbay: one streaming interface to many chat-model providers.

The public surface is listed in ``__all__``; everything else is an implementation detail.
"""

from __future__ import annotations

from typing import Any

from patchbay.errors import (
    AllProvidersFailed,
    Attempt,
    AuthError,
    BudgetExceeded,
    ChallengeRequired,
    ClientRateLimited,
    ConnectionFailed,
    ConnectTimeout,
    ContextTooLong,
    DeadlineExceeded,
    EndpointNotFound,
    FirstByteTimeout,
    IdleTimeout,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotSupported,
    PatchbayError,
    PayloadTooLarge,
    PaymentRequired,
    PermissionDenied,
    ProtocolError,
    ProviderNotWorking,
    RateLimited,
    RequestTimeout,
    ResourceNotFound,
    SessionRejected,
    StreamInterrupted,
    UnsupportedFeature,
    UpstreamError,
)
from patchbay.events import (
    Charge,
    EventStream,
    Fallback,
    Finish,
    Ledger,
    Logprobs,
    Mark,
    ProviderInfo,
    StreamConsumed,
    StreamEvent,
    TextDelta,
    TextStream,
    ToolCallDelta,
    Transcript,
    Usage,
)
from patchbay.timeouts import UNSET, Timeout

__version__ = "0.1.0"

#: Names imported on first use, so that ``import patchbay`` stays fast (no HTTP client library, no msgspec).
_LAZY = {
    "AsyncChunkStream": "patchbay.client",
    "AsyncClient": "patchbay.client",
    "ChunkStream": "patchbay.client",
    "Client": "patchbay.client",
    "ChatCompletion": "patchbay.chat.response",
    "ChatCompletionChunk": "patchbay.chat.response",
    "Model": "patchbay.chat.response",
    "ModelList": "patchbay.chat.response",
    "providers": "patchbay.providers",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'patchbay' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(module_name)
    value = module if module_name.endswith(name) else getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "UNSET",
    "AllProvidersFailed",
    "AsyncChunkStream",
    "AsyncClient",
    "Attempt",
    "AuthError",
    "BudgetExceeded",
    "ChallengeRequired",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChunkStream",
    "Client",
    "ClientRateLimited",
    "EndpointNotFound",
    "MethodNotAllowed",
    "Model",
    "ModelList",
    "PayloadTooLarge",
    "ConnectTimeout",
    "ConnectionFailed",
    "ContextTooLong",
    "DeadlineExceeded",
    "FirstByteTimeout",
    "IdleTimeout",
    "EventStream",
    "Charge",
    "Fallback",
    "Finish",
    "Ledger",
    "InvalidRequest",
    "Logprobs",
    "Mark",
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
    "ResourceNotFound",
    "Timeout",
    "ToolCallDelta",
    "Transcript",
    "UnsupportedFeature",
    "UpstreamError",
    "Usage",
    "__version__",
]
