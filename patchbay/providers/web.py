"""What the web chat providers share: a browser-like session that carries the user's cookies.

Hosted chat services sit behind bot protection (Cloudflare and the like). Getting past it takes
two things a script does not have, and :func:`browser_session` brings both:

- a browser's TLS and HTTP/2 fingerprint and headers: ``impersonate`` names a curl_cffi profile
  (``"chrome"`` by default, ``None`` to turn it off) used for https sites;
- a real browser's cookies for the site (``cf_clearance`` and the session), imported with
  ``patchbay cookies import`` into :class:`~patchbay.secrets.cookies.CookieStore`, sent with the
  user-agent they were issued to.

When the site rejects the imported cookies (a challenge page or a captcha in place of the
answer), they are marked rejected, as a banned credential is, and not sent again until the user
imports fresh ones. A :class:`~patchbay.errors.ChallengeRequired` cools the target down at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar, cast

from patchbay.errors import ChallengeRequired, InvalidRequest, SessionRejected
from patchbay.net.cookiejar import CookieJar
from patchbay.net.curl import browser_profile
from patchbay.net.session import HTTPSession
from patchbay.net.transport import InvalidRequestError
from patchbay.paths import config_dir
from patchbay.providers.base import AsyncGeneratorProvider, Call
from patchbay.secrets.cookies import CookieStore, SiteCookies, site_of

__all__ = ["DEFAULT_IMPERSONATE", "browser_session", "cookie_store", "imported_cookies", "is_web_provider",
           "with_impersonation"]

P = TypeVar("P", bound=type[AsyncGeneratorProvider])

DEFAULT_IMPERSONATE = "chrome"  # curl_cffi's current Chrome profile

#: Answers that say the cookies did not get the request through.
_REJECTIONS = (ChallengeRequired, SessionRejected)


def is_web_provider(provider: type[AsyncGeneratorProvider]) -> bool:
    """A provider that talks to a web chat site through :func:`browser_session`."""
    return hasattr(provider, "impersonate")


def with_impersonation(provider: P, profile: str | bool | None) -> P:
    """``provider`` impersonating ``profile`` (a curl_cffi browser profile; ``False`` or ``None``:
    plain requests): the ``[providers.<web provider>] impersonate = ...`` config option. The copy
    shares the original's credentials and cookies."""
    if profile is True or (profile is not None and profile is not False and not isinstance(profile, str)):
        raise InvalidRequest("impersonate must be a browser profile name (chrome, firefox...) or false",
                             param="impersonate")
    chosen = profile or None
    if chosen is not None:
        try:
            browser_profile(chosen)
        except InvalidRequestError as error:
            raise InvalidRequest(str(error), param="impersonate") from None
    copy = type(provider.__name__, (provider,), {"impersonate": chosen, "__module__": provider.__module__})
    return cast(P, copy)


def cookie_store() -> CookieStore:
    """The store ``patchbay cookies import`` writes: ``<config dir>/cookies``."""
    return CookieStore(config_dir() / "cookies")


def imported_cookies(base_url: str) -> SiteCookies | None:
    """The user's imported cookies for the site at ``base_url`` (read each time: an import takes
    effect at once), or None."""
    return cookie_store().get(site_of(base_url))


@asynccontextmanager
async def browser_session(
    call: Call,
    base_url: str,
    *,
    provider: str,
    headers: Mapping[str, str],
    impersonate: str | None = DEFAULT_IMPERSONATE,
    cookies: CookieJar | None = None,
    verify_ssl: bool = True,
) -> AsyncIterator[HTTPSession]:
    """An :class:`HTTPSession` for a web chat site: impersonating a browser over https, with the
    imported cookies (and their user-agent) in ``cookies`` (a jar that outlives the session)."""
    entry = imported_cookies(base_url)
    jar = cookies if cookies is not None else CookieJar()
    merged = dict(headers)
    if entry is not None:
        jar.set(entry.site, entry.cookies)
    profile = impersonate if base_url.lower().startswith("https://") else None
    if entry is not None and entry.user_agent:
        merged = {k: v for k, v in merged.items() if k.lower() != "user-agent"}
        merged["User-Agent"] = entry.user_agent  # cf_clearance is bound to the browser that earned it
    elif profile is not None:
        merged = {k: v for k, v in merged.items() if k.lower() != "user-agent"}  # the profile's own
    async with HTTPSession(timeout=call.timeout, proxy=call.proxy, verify_ssl=verify_ssl, cookies=jar,
                           headers=merged, provider=provider, impersonate=profile) as http:
        try:
            yield http
        except _REJECTIONS as error:
            if entry is not None:
                cookie_store().reject(entry.site, error.message, entry=entry)
                jar.clear(entry.site)
            raise
