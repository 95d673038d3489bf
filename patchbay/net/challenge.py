"""Recognise a browser challenge (Cloudflare's "Just a moment...", DDoS-Guard) in an error answer.

Web chat services sit behind bot protection that answers a non-browser with a 403 or 503 page a
browser solves in JavaScript. Such an answer says nothing about the service itself: the fix is a
real browser's cookies (``patchbay cookies import``), so it becomes a
:class:`~patchbay.errors.ChallengeRequired` that names the challenge and carries none of the page.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["challenge_in"]

_STATUSES = frozenset({403, 429, 503})
#: Body markers -> what the challenge is called in the error message.
_BODY_MARKERS = (
    ("/cdn-cgi/challenge-platform/", "a Cloudflare browser challenge"),
    ("<title>just a moment...</title>", "a Cloudflare browser challenge"),
    ("cf-chl-", "a Cloudflare browser challenge"),
    ("attention required! | cloudflare", "a Cloudflare block page"),
    ("ddos-guard", "a DDoS-Guard browser check"),
)


def challenge_in(status: int, headers: Mapping[str, str], body: str) -> str | None:
    """What challenge the answer is ("a Cloudflare browser challenge"...), or None for an ordinary answer."""
    if headers.get("cf-mitigated", "").lower() == "challenge":
        return "a Cloudflare browser challenge"
    if status not in _STATUSES:
        return None
    head = body[:8192].lower()
    for marker, name in _BODY_MARKERS:
        if marker in head:
            return name
    server = headers.get("server", "").lower()
    is_html = "html" in headers.get("content-type", "").lower() or head.lstrip().startswith(("<!doctype", "<html"))
    if is_html and server in ("cloudflare", "ddos-guard"):
        return "a Cloudflare block page" if server == "cloudflare" else "a DDoS-Guard browser check"
    return None
