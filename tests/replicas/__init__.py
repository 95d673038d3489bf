"""Local replica servers of the remote chat services, for provider tests (docs/protocols.md#replicas).

Each replica is a real aiohttp server on 127.0.0.1 that checks the shape of every request
(failures land in ``violations`` and are answered 400) and answers by a named fault scenario.
"""

from __future__ import annotations

from tests.replicas.aichatonline import AiChatOnlineReplica
from tests.replicas.base import (
    DEFAULT_ANSWER,
    MAX_SLEEP,
    RecordedRequest,
    ReplicaServer,
    ShapeError,
    split_inside_multibyte,
)
from tests.replicas.liaobots import CAPTCHA_PAGE, LiaobotsReplica
from tests.replicas.liaobots_legacy import LEGACY_MODELS, LiaobotsLegacyReplica
from tests.replicas.openai_fake import OpenAIFake, error_object

#: Service name (as on the command line) -> replica class.
REPLICAS: dict[str, type[ReplicaServer]] = {
    "liaobots": LiaobotsReplica,
    "liaobots_legacy": LiaobotsLegacyReplica,
    "aichatonline": AiChatOnlineReplica,
    "openai": OpenAIFake,
}

__all__ = [
    "CAPTCHA_PAGE",
    "DEFAULT_ANSWER",
    "LEGACY_MODELS",
    "MAX_SLEEP",
    "REPLICAS",
    "AiChatOnlineReplica",
    "LiaobotsLegacyReplica",
    "LiaobotsReplica",
    "OpenAIFake",
    "RecordedRequest",
    "ReplicaServer",
    "ShapeError",
    "error_object",
    "split_inside_multibyte",
]
