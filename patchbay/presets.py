"""Named presets for common OpenAI-compatible services.

A preset is only where a service lives and how it authenticates; it holds no key. Build a
provider from one with :meth:`patchbay.providers.openai_compatible.OpenAICompatible.from_preset`.
"""

from __future__ import annotations

from dataclasses import dataclass

from patchbay.errors import InvalidRequest

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    """An OpenAI-compatible service: its API base URL and where its key comes from."""

    name: str
    base_url: str
    key_env: str | None  # environment variable holding the API key(s), comma-separated
    needs_auth: bool  # a request without a key is refused by the service
    local: bool  # a server on this machine rather than a hosted service


#: Preset name -> preset.
PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", needs_auth=True, local=False),
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
