"""Liaobots, in its two generations: :mod:`.current` (the auth-code API) and :mod:`.legacy`
(the older one, with the seed's module-level ``_create_completion`` call shape)."""

__all__: list[str] = []
