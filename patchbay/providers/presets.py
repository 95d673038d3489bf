"""Named presets for common OpenAI-compatible services.

A preset is only where a service lives and how it authenticates; it holds no key. Build a
provider from one with :meth:`patchbay.providers.openai_compatible.OpenAICompatible.from_preset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from patchbay.errors import InvalidRequest
from patchbay.providers.catalog import Prices

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    """An OpenAI-compatible service: its API base URL and where its key comes from."""

    name: str
    base_url: str
    key_env: str | None  # environment variable holding the API key(s), comma-separated
    needs_auth: bool  # a request without a key is refused by the service
    local: bool  # a server on this machine rather than a hosted service
    #: List prices (USD per million tokens) of some of its models; config and the catalog win. A
    #: local server's models cost nothing.
    prices: Mapping[str, Prices] = field(default_factory=dict)


#: OpenAI's list prices (platform.openai.com/docs/pricing, as of 2026): input, output, cached input.
OPENAI_PRICES = {
    "gpt-4o-mini": Prices(0.15, 0.60, 0.075),
    "gpt-4o": Prices(2.50, 10.00, 1.25),
    "gpt-4.1": Prices(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Prices(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Prices(0.10, 0.40, 0.025),
    "o4-mini": Prices(1.10, 4.40, 0.275),
}


#: Preset name -> preset.
PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", needs_auth=True, local=False,
               prices=OPENAI_PRICES),
        Preset("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", needs_auth=True, local=False),
        Preset("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", needs_auth=True, local=False),
        Preset("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY", needs_auth=True, local=False),
        Preset("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", needs_auth=True, local=False),
        Preset("ollama", "http://localhost:11434/v1", None, needs_auth=False, local=True),
        Preset("vllm", "http://localhost:8000/v1", "VLLM_API_KEY", needs_auth=False, local=True),
        Preset("llamacpp", "http://localhost:8080/v1", None, needs_auth=False, local=True),
        Preset("lmstudio", "http://localhost:1234/v1", None, needs_auth=False, local=True),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case-insensitive); InvalidRequest lists the valid names."""
    preset = PRESETS.get(name.strip().lower()) if isinstance(name, str) else None
    if preset is None:
        raise InvalidRequest(
            f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}", param="preset"
        )
    return preset
