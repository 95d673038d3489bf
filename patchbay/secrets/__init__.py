"""Credentials patchbay holds: pools of auth codes and API keys, stored keys, site cookies.

- :mod:`patchbay.secrets.pool`: :class:`~patchbay.secrets.pool.CredentialPool`, several
  credentials for one service used in turn, with bans shared through the router's state store.
- :mod:`patchbay.secrets.store`: keys kept by ``patchbay keys set NAME`` in ``keys.json``.
- :mod:`patchbay.secrets.cookies`: cookies kept per site by ``patchbay cookies``.

Scrubbing them from text is :mod:`patchbay.redact`, one layer down, since errors use it.
"""

__all__: list[str] = []
