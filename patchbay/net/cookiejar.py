"""Cookies a session sends and keeps: per host, from ``Set-Cookie`` and from imported browser cookies.

A web chat service's session cookie (and a browser's ``cf_clearance``, imported by the user) must
outlive one request; :class:`CookieJar` keeps them per host across sessions and event loops and
sends the ones that match a request's host and path. It holds what providers need, not a
browser's whole model: host-only and domain cookies, paths, expiry, and ``Secure`` (sent over
https only, except to loopback hosts, as browsers treat them as secure contexts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from yarl import URL

from patchbay.redact import register_secret

__all__ = ["CookieJar"]

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True, slots=True)
class _Cookie:
    name: str
    value: str
    domain: str  # lower-case host, without a leading dot
    host_only: bool  # sent to ``domain`` only, not its subdomains
    path: str
    secure: bool
    expires: float | None  # wall-clock seconds, None for a session cookie

    def matches(self, host: str, path: str, secure: bool) -> bool:
        if self.host_only:
            if host != self.domain:
                return False
        elif host != self.domain and not host.endswith("." + self.domain):
            return False
        if self.secure and not secure and host not in _LOOPBACK:
            return False
        return path == self.path or path.startswith(self.path.rstrip("/") + "/") or self.path == "/"


class CookieJar:
    """Cookies per (domain, path, name); thread-safe, for use from any event loop."""

    def __init__(self) -> None:
        self._cookies: dict[tuple[str, str, str], _Cookie] = {}
        self._lock = threading.Lock()

    def header_for(self, url: URL) -> str | None:
        """The ``Cookie`` header value for a request to ``url``, or None when no cookie matches."""
        host = (url.raw_host or "").lower()
        path = url.raw_path or "/"
        secure = url.scheme == "https"
        now = time.time()
        with self._lock:
            if not self._cookies:
                return None
            expired = [key for key, c in self._cookies.items() if c.expires is not None and c.expires <= now]
            for key in expired:
                del self._cookies[key]
            chosen = [c for c in self._cookies.values() if c.matches(host, path, secure)]
        if not chosen:
            return None
        chosen.sort(key=lambda c: -len(c.path))  # longer paths first, as RFC 6265 §5.4 orders them
        return "; ".join(f"{c.name}={c.value}" for c in chosen)

    def update_from(self, url: URL, set_cookie_headers: Iterable[str]) -> None:
        """Keep the cookies of a response's ``Set-Cookie`` headers (a past expiry deletes one)."""
        host = (url.raw_host or "").lower()
        for header in set_cookie_headers:
            parsed = SimpleCookie()
            try:
                parsed.load(header)
            except CookieError:
                continue  # a malformed Set-Cookie is ignored, as browsers do
            for name, morsel in parsed.items():
                domain = morsel["domain"].lower().lstrip(".")
                if domain and host != domain and not host.endswith("." + domain):
                    continue  # a cookie for another site is refused (RFC 6265 §5.3 step 6)
                self._store(_Cookie(
                    name=name, value=morsel.value, domain=domain or host, host_only=not domain,
                    path=morsel["path"] or _default_path(url), secure=bool(morsel["secure"]),
                    expires=_expiry(morsel["max-age"], morsel["expires"]),
                ))

    def set(self, url: str | URL, cookies: Mapping[str, str], *, expires: float | None = None) -> None:
        """Add cookies for ``url``'s host and its subdomains (imported browser cookies)."""
        target = url if isinstance(url, URL) else URL(url)
        domain = (target.raw_host or "").lower()
        for name, value in cookies.items():
            self._store(_Cookie(name=name, value=value, domain=domain, host_only=False, path="/",
                                secure=False, expires=expires))

    def clear(self, url: str | URL | None = None) -> None:
        """Forget every cookie, or those of ``url``'s host (a session the service rejected)."""
        with self._lock:
            if url is None:
                self._cookies.clear()
                return
            target = url if isinstance(url, URL) else URL(url)
            host = (target.raw_host or "").lower()
            for key in [key for key, c in self._cookies.items() if c.matches(host, "/", True)]:
                del self._cookies[key]

    def __contains__(self, url: object) -> bool:
        """Whether any cookie would be sent to ``url``."""
        if not isinstance(url, str | URL):
            return False
        return self.header_for(url if isinstance(url, URL) else URL(url)) is not None

    def _store(self, cookie: _Cookie) -> None:
        register_secret(cookie.value)  # a session cookie is a credential: redacted wherever it shows
        key = (cookie.domain, cookie.path, cookie.name)
        with self._lock:
            if cookie.expires is not None and cookie.expires <= time.time():
                self._cookies.pop(key, None)
            else:
                self._cookies[key] = cookie


def _default_path(url: URL) -> str:
    path = url.raw_path or "/"
    return path[: path.rfind("/")] or "/" if path.startswith("/") else "/"


def _expiry(max_age: str, expires: str) -> float | None:
    if max_age:
        try:
            return time.time() + int(max_age)
        except ValueError:
            pass
    if expires:
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError):
            return None
    return None
