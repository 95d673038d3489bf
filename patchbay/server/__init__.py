"""The OpenAI-compatible HTTP server (``patchbay serve``): a plain ASGI app on uvicorn.

``from patchbay.server import Gateway`` to mount the app in another ASGI server.
"""

from __future__ import annotations

from patchbay.server.app import Gateway, create_app
from patchbay.server.run import serve

__all__ = ["Gateway", "create_app", "serve"]
