"""The web chat page at ``/``: a few static files shipped inside the package.

Every asset comes from the installed package (no CDN, works offline) and is read once at start-up.
The page talks to the same server's OpenAI API. Model output is untrusted, so the page builds its
DOM from text nodes only, and the Content-Security-Policy below allows no inline script, no
foreign origin and no plugin: even a rendering bug could not run a script or load a resource.
"""

from __future__ import annotations

from importlib.resources import files

from patchbay.errors import EndpointNotFound
from patchbay.server.asgi import Headers, Receive, Scope, Send, send_bytes

__all__ = ["ASSETS", "WebPage"]

#: URL path -> (file in ``patchbay/server/static``, content type).
ASSETS: dict[str, tuple[str, bytes]] = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/markdown.js": ("markdown.js", b"text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", b"text/css; charset=utf-8"),
    "/ui/icon.svg": ("icon.svg", b"image/svg+xml"),
}

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    b"manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS: Headers = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),  # small files; a new version shows on the next load
]


class WebPage:
    """Serves :data:`ASSETS` from memory (``/`` and ``/ui/{asset}`` in the route table); ``paths``
    are the URL paths it answers, any other is a 404."""

    def __init__(self) -> None:
        static = files("patchbay.server") / "static"
        self._files = {path: (content_type, (static / name).read_bytes())
                       for path, (name, content_type) in ASSETS.items()}

    @property
    def paths(self) -> list[str]:
        return list(self._files)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._files.get(scope["path"])
        if found is None:  # the route table sends it every path under /ui/
            raise EndpointNotFound(f"no endpoint at {scope['path']}; see /openapi.json")
        content_type, body = found
        await send_bytes(send, 200, body, content_type, headers=SECURITY_HEADERS)
