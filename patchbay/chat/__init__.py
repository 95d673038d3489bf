"""The OpenAI-shaped chat model: the request, and pure conversions of it (no providers here)."""

__all__: list[str] = []
