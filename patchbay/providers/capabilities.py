"""What a target can honour, per feature, and what a request needs.

Each provider states, per feature, :attr:`Support.NATIVE` (the service does it),
:attr:`Support.EMULATED` (patchbay does it on top: prompt and parse, or constrained decoding) or
:attr:`Support.NONE`. :func:`needs` reads a request and lists the features it asks for, each with
the field that asks; the router skips a target whose support for one of them is ``NONE``, so a
request is never answered by a target that would drop part of it. Two features are whole
endpoints rather than parts of a chat: ``text_completion`` (a raw prompt, ``POST /v1/completions``)
and ``embeddings`` (``POST /v1/embeddings``); both are ``NONE`` unless a provider states them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass

from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import InvalidRequest

__all__ = ["FEATURES", "Capabilities", "Need", "Support", "needs"]


class Support(enum.Enum):
    NATIVE = "native"
    EMULATED = "emulated"
    NONE = "none"


#: Feature name -> how an error names it ("no target of route 'x' accepts <this>").
FEATURES: dict[str, str] = {
    "tools": "tools",
    "tool_choice": "a required or named tool_choice",
    "parallel_tool_calls": "parallel tool calls",
    "json_object": "JSON output (response_format json_object)",
    "json_schema": "JSON Schema output (response_format json_schema)",
    "image_input": "images (or other non-text content parts)",
    "logprobs": "logprobs",
    "n": "n > 1",
    "system_message": "system messages",
    "prefill": "a trailing assistant message (prefill)",
    "text_completion": "a raw prompt (legacy completions)",
    "embeddings": "embeddings",
}

_N, _E, _X = Support.NATIVE, Support.EMULATED, Support.NONE


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Support per feature (see :data:`FEATURES`); the defaults are a plain-text chat service's."""

    tools: Support = _X
    tool_choice: Support = _X
    parallel_tool_calls: Support = _X
    json_object: Support = _X
    json_schema: Support = _X
    image_input: Support = _X
    logprobs: Support = _X
    n: Support = _X
    system_message: Support = _N
    prefill: Support = _X
    text_completion: Support = _X  #: completes a raw prompt, no chat template (POST /v1/completions)
    embeddings: Support = _X  #: answers POST /v1/embeddings (AsyncGeneratorProvider.embed)

    @classmethod
    def all_native(cls) -> Capabilities:
        """Everything native: an OpenAI-compatible API passes every feature through."""
        return cls(**{name: _N for name in FEATURES})

    @classmethod
    def emulated_output(cls) -> Capabilities:
        """A text-only web chat: tools and JSON by prompt and parse; no images, logprobs or n."""
        return cls(tools=_E, tool_choice=_E, parallel_tool_calls=_E, json_object=_E, json_schema=_E)

    def support(self, feature: str) -> Support:
        return getattr(self, feature)  # type: ignore[no-any-return]

    def accepts(self, feature: str) -> bool:
        return self.support(feature) is not Support.NONE

    def merged(self, overrides: Mapping[str, object], *, where: str = "capabilities") -> Capabilities:
        """These capabilities with ``overrides`` (feature -> "native" / "emulated" / "none") laid on top."""
        changes: dict[str, Support] = {}
        for feature, value in overrides.items():
            if feature not in FEATURES:
                raise InvalidRequest(f"{where}: unknown feature {feature!r}; features: {', '.join(FEATURES)}",
                                     param=where)
            try:
                changes[feature] = value if isinstance(value, Support) else Support(value)
            except ValueError:
                raise InvalidRequest(f"{where}.{feature} must be native, emulated or none, got {value!r}",
                                     param=f"{where}.{feature}") from None
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, str]:
        return {name: self.support(name).value for name in FEATURES}


@dataclass(frozen=True, slots=True)
class Need:
    """A feature a request asks for, and the field that asks for it."""

    feature: str
    param: str

    @property
    def phrase(self) -> str:
        return FEATURES[self.feature]


def needs(request: ChatCompletionRequest) -> tuple[Need, ...]:
    """The features ``request`` asks for, in the order of :data:`FEATURES`."""
    found: list[Need] = []
    if request.tools and request.tool_choice != "none":
        found.append(Need("tools", "tools"))
        if request.tool_choice == "required" or isinstance(request.tool_choice, dict):
            found.append(Need("tool_choice", "tool_choice"))
        if request.parallel_tool_calls:
            found.append(Need("parallel_tool_calls", "parallel_tool_calls"))
    kind = request.response_format.get("type") if request.response_format else None
    if kind in ("json_object", "json_schema"):
        found.append(Need(kind, "response_format"))
    image = _first_image(request)
    if image is not None:
        found.append(Need("image_input", image))
    if request.logprobs:
        found.append(Need("logprobs", "logprobs"))
    if request.n is not None and request.n > 1:
        found.append(Need("n", "n"))
    system = next((index for index, message in enumerate(request.messages) if message.role == "system"), None)
    if system is not None:
        found.append(Need("system_message", f"messages[{system}]"))
    # A trailing assistant message is not a need: a target without prefill answers a new turn,
    # as OpenAI does. The router uses the prefill capability to continue an interrupted answer.
    if request.prompt is not None:
        found.append(Need("text_completion", "prompt"))
    # "embeddings" is never a need of a chat request: Router.embed asks for it by itself.
    return tuple(found)


def _first_image(request: ChatCompletionRequest) -> str | None:
    """The path of the first content part that is not text (an image, audio or a file), if any."""
    for index, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for position, part in enumerate(message.content):
                if part.get("type") not in ("text", "refusal"):
                    return f"messages[{index}].content[{position}]"
    return None
