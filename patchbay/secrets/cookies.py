"""Browser cookies for web chat services: imported once, stored privately, sent by that site's provider.

Web chat services sit behind browser challenges (Cloudflare); a real browser that passed the
challenge holds cookies (``cf_clearance``, a session) the service accepts, bound to that browser's
user-agent. ``patchbay cookies import`` reads them from a file the browser or an extension exported
(:func:`parse_cookie_file`: HAR, cookie-JSON, Netscape ``cookies.txt``) or straight from a local
browser profile (:func:`from_browser`), and :class:`CookieStore` keeps one JSON file per site
(0600, in a 0700 directory). Values are registered as secrets the moment they are read, so they
are redacted from errors and logs; when the site rejects them, :meth:`CookieStore.reject` bans them
(as a rejected credential is) until they are imported again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from patchbay.errors import InvalidRequest
from patchbay.paths import config_dir, write_private_json
from patchbay.redact import fingerprint, mask, redact, register_secret

__all__ = [
    "BROWSERS",
    "CookieStore",
    "SOURCES",
    "SiteCookies",
    "from_browser",
    "parse_cookie_file",
    "site_of",
]

log = logging.getLogger("patchbay.cookies")

#: Where each imported entry came from.
SOURCES = ("har", "json", "netscape", "chrome", "chromium", "firefox", "edge", "brave")
#: The browsers :func:`from_browser` reads.
BROWSERS = ("chrome", "chromium", "firefox", "edge", "brave")
INSTALL_HINT = "pip install 'patchbay[web]'"
SECRET_MIN_LENGTH = 8  # shorter values ("1", "true", "en-US") are preferences, and would redact ordinary text
_FORMAT_VERSION = 1
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 6265 cookie-name (a token)
_BAD_VALUE = re.compile(r"[\x00-\x1f\x7f;]")  # what would break, or add to, a Cookie header


# -- sites ---------------------------------------------------------------------------------------------


def site_of(url_or_host: str) -> str:
    """The origin ``https://host[:port]`` of a URL or a bare host: lower-case, default port dropped,
    ``https`` when no scheme is given. Anything else is InvalidRequest."""
    text = url_or_host.strip()
    if not text:
        raise InvalidRequest("a site is needed: a URL such as https://example.com, or a host", param="site")
    parts = urlsplit(text if "://" in text else f"https://{text}")
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidRequest(f"{url_or_host!r} is not an http(s) site", param="site")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidRequest(f"{url_or_host!r} has an invalid port", param="site") from None
    host = (host or "").rstrip(".")
    if not host or not _valid_host(host):
        raise InvalidRequest(f"{url_or_host!r} names no valid host", param="site")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def _valid_host(host: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    return all(re.fullmatch(r"[a-z0-9_-]+", label) for label in host.split("."))


def _host(site: str) -> str:
    """The host of an origin made by :func:`site_of` (IPv6 without brackets)."""
    return urlsplit(site).hostname or ""


def _applies(domain: str, host_only: bool, host: str) -> bool:
    """Whether a cookie set for ``domain`` is sent to ``host`` (RFC 6265 domain matching)."""
    domain = domain.lstrip(".")
    return host == domain or (not host_only and host.endswith(f".{domain}"))


# -- the entry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteCookies:
    """The cookies one site gets, with the browser user-agent they belong to (Cloudflare binds
    ``cf_clearance`` to it) and, once the site refused them, why."""

    site: str
    cookies: dict[str, str]
    user_agent: str | None
    source: str
    imported_at: float
    rejected: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", site_of(self.site))
        object.__setattr__(self, "cookies", dict(self.cookies))

    def header(self) -> str:
        """The ``Cookie`` request header's value: ``name=value; name2=value2``."""
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def fingerprint(self) -> str:
        """A stable id of these cookies, never their values (to share a ban through router state)."""
        return fingerprint(self.header())

    def register(self) -> None:
        """Register every value worth hiding as a secret, so errors and logs redact it."""
        for value in self.cookies.values():
            if len(value) >= SECRET_MIN_LENGTH:
                register_secret(value)

    def __repr__(self) -> str:
        cookies = {name: mask(value) for name, value in self.cookies.items()}
        return (f"SiteCookies(site={self.site!r}, cookies={cookies!r}, user_agent={self.user_agent!r}, "
                f"source={self.source!r}, imported_at={self.imported_at!r}, rejected={self.rejected!r})")


# -- the store -----------------------------------------------------------------------------------------


class CookieStore:
    """Imported cookies, one JSON file per site in ``directory`` (default ``<config dir>/cookies``).

    Files are 0600 in a 0700 directory and replaced atomically, so a provider reading while the
    CLI imports sees the old entry or the new one, never half of either.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else config_dir() / "cookies"

    def path(self, site: str) -> Path:
        """The file that holds ``site``'s cookies: ``https_example.com.json``."""
        scheme, _, rest = site_of(site).partition("://")
        return self.directory / f"{scheme}_{quote(rest, safe='.-_')}.json"

    def get(self, site: str) -> SiteCookies | None:
        """The cookies to send to ``site``, their values registered as secrets; None when none are
        stored, the file cannot be read (one warning), or the site rejected them."""
        entry = self._read(self.path(site))
        if entry is None or entry.rejected is not None:
            return None
        entry.register()
        return entry

    def put(self, entry: SiteCookies) -> Path:
        """Store ``entry``, replacing what its site had (a rejected entry too); returns the file."""
        path = self.path(entry.site)
        write_private_json(path, {"version": _FORMAT_VERSION, "site": entry.site, "cookies": entry.cookies,
                                  "user_agent": entry.user_agent, "source": entry.source,
                                  "imported_at": entry.imported_at, "rejected": entry.rejected})
        return path

    def remove(self, site: str) -> bool:
        """Forget ``site``'s cookies; False when none were stored."""
        try:
            self.path(site).unlink()
        except FileNotFoundError:
            return False
        return True

    def entries(self) -> list[SiteCookies]:
        """Every stored entry, rejected ones too (for listing), by site; values are not registered."""
        if not self.directory.is_dir():
            return []
        found = (self._read(path) for path in sorted(self.directory.glob("*.json")))
        return sorted((entry for entry in found if entry is not None), key=lambda entry: entry.site)

    def reject(self, site: str, reason: str, *, entry: SiteCookies | None = None) -> None:
        """Mark ``site``'s cookies rejected (``reason``, redacted, says why), so :meth:`get` stops
        returning them until they are imported again. With ``entry``, only if that is still the
        stored one: cookies imported while a request with the old ones failed stay usable."""
        stored = self._read(self.path(site))
        if stored is None or stored.rejected is not None:
            return
        if entry is not None and (entry.imported_at, entry.cookies) != (stored.imported_at, stored.cookies):
            return
        log.warning("%s rejected the imported cookies: %s", stored.site, redact(reason))
        self.put(dataclasses.replace(stored, rejected=redact(reason) or "rejected"))

    def _read(self, path: Path) -> SiteCookies | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read the cookie file %s: %s", path, type(exc).__name__)
            return None
        try:
            data = json.loads(text)
            entry = SiteCookies(site=data["site"], cookies=_string_map(data["cookies"]),
                                user_agent=_optional_string(data.get("user_agent")), source=str(data["source"]),
                                imported_at=float(data["imported_at"]),
                                rejected=_optional_string(data.get("rejected")))
        except (ValueError, KeyError, TypeError, InvalidRequest):
            log.warning("ignoring the cookie file %s: it is not one patchbay wrote", path)
            return None
        if entry.site != _site_of_path(path):
            log.warning("ignoring the cookie file %s: it holds cookies for %s", path, entry.site)
            return None
        return entry


def _site_of_path(path: Path) -> str | None:
    scheme, _, rest = path.stem.partition("_")
    try:
        return site_of(f"{scheme}://{unquote(rest)}")
    except InvalidRequest:
        return None


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError("not a map of strings")
    return dict(value)


def _optional_string(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("not a string")
    return value


# -- parsing files -------------------------------------------------------------------------------------


@dataclass
class _Cookie:
    """One cookie as a file states it, before it is grouped by site."""

    name: str
    value: str | None  # None: a Set-Cookie that deletes it
    domain: str  # lower-case, as written (a leading dot says it is for subdomains too)
    host_only: bool
    origin: str  # the site it belongs to when no site is asked for
    user_agent: str | None = None


def parse_cookie_file(path: Path, *, site: str | None = None, user_agent: str | None = None) -> list[SiteCookies]:
    """The cookies in ``path`` by site, its format told from its content: a HAR capture, cookie-JSON
    (Cookie-Editor / EditThisCookie lists, Playwright storage state, a ``{name: value}`` object) or
    a Netscape ``cookies.txt``. ``site`` keeps only the cookies sent to that site and files them
    under it; ``user_agent`` overrides the one a HAR records. Expired cookies are left out; a file
    that cannot be read is InvalidRequest naming the file and what is wrong (never a value)."""
    wanted = site_of(site) if site is not None else None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path} is not a cookie file: it is not UTF-8 text") from None
    now = time.time()
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}") from None
        source, cookies = _from_json(document, path, wanted, now)
    elif stripped:
        source, cookies = "netscape", list(_from_netscape(text, path, now))
    else:
        raise InvalidRequest(f"{path} is empty")
    entries = _group(cookies, wanted, user_agent, source, now)
    if not entries:
        where = f" for {wanted}" if wanted else ""
        hint = (" (Chrome leaves cookies out of HAR files unless exported 'with sensitive data')"
                if source == "har" else "")
        raise InvalidRequest(f"{path} holds no unexpired cookies{where}{hint}")
    return entries


def _group(cookies: Iterable[_Cookie], site: str | None, user_agent: str | None, source: str,
           now: float) -> list[SiteCookies]:
    """Cookies by site (in file order, later ones replacing earlier ones of the same name)."""
    host = _host(site) if site is not None else None
    groups: dict[str, dict[str, str]] = {}
    agents: dict[str, str] = {}
    chosen = [cookie for cookie in cookies if host is None or _applies(cookie.domain, cookie.host_only, host)]
    if host is not None:  # a cookie for the host itself wins over one for its parent domain
        chosen.sort(key=lambda cookie: len(cookie.domain.lstrip(".")))
    for cookie in chosen:
        key = site if site is not None else cookie.origin
        group = groups.setdefault(key, {})
        if cookie.value is None:
            group.pop(cookie.name, None)
        else:
            group[cookie.name] = cookie.value
        if cookie.user_agent:
            agents[key] = cookie.user_agent
    entries = [SiteCookies(site=key, cookies=values, user_agent=user_agent or agents.get(key), source=source,
                           imported_at=now) for key, values in groups.items() if values]
    for entry in entries:
        entry.register()
    return sorted(entries, key=lambda entry: entry.site)


def _checked(name: Any, value: Any, where: str) -> tuple[str, str]:
    """A cookie's name and value, or InvalidRequest saying what is wrong (never the value)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):  # not shown: a misplaced separator puts the value in it
        raise InvalidRequest(f"{where}: a cookie name must be a non-empty token (no spaces, ';', '=' or quotes)")
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}: the value of cookie {name!r} is not a string")
    if _BAD_VALUE.search(value):
        raise InvalidRequest(f"{where}: the value of cookie {name!r} holds characters a Cookie header cannot carry")
    return name, value


def _expired(expires: float | None, now: float) -> bool:
    return expires is not None and _seconds(expires) <= now


def _seconds(expires: float) -> float:
    """An expiry in Unix seconds; some exporters write milliseconds or microseconds."""
    if expires > 1e14:
        return expires / 1e6
    if expires > 1e11:
        return expires / 1e3
    return expires


def _domain_origin(domain: str) -> str:
    """The site a cookie for ``domain`` is filed under: ``https://`` + the domain without its dot."""
    bare = domain.strip().lstrip(".").lower()
    try:
        return site_of(bare) if bare else ""
    except InvalidRequest:
        return ""


# JSON: HAR, cookie lists, storage state, {name: value} --------------------------------------------------


def _from_json(document: Any, path: Path, site: str | None, now: float) -> tuple[str, list[_Cookie]]:
    if isinstance(document, dict) and "log" in document:
        return "har", list(_from_har(document, path, now))
    if isinstance(document, dict) and isinstance(document.get("cookies"), list):  # Playwright / Puppeteer state
        return "json", list(_from_cookie_list(document["cookies"], path, site, now, "cookies"))
    if isinstance(document, list):
        return "json", list(_from_cookie_list(document, path, site, now, None))
    if isinstance(document, dict):
        if site is None:
            raise InvalidRequest(f"{path} is a {{name: value}} object, which names no site: give --site")
        host = _host(site)
        return "json", [_Cookie(*_checked(name, value, f"{path}: entry {number}"), domain=host, host_only=True,
                                origin=site) for number, (name, value) in enumerate(document.items(), 1)]
    raise InvalidRequest(f"{path}: expected a HAR file, a list of cookies or a {{name: value}} object")


def _from_cookie_list(items: list[Any], path: Path, site: str | None, now: float,
                      key: str | None) -> Iterator[_Cookie]:
    """Cookie-Editor / EditThisCookie exports (``expirationDate``), Playwright and Puppeteer
    (``expires``, -1 for a session cookie)."""
    for number, item in enumerate(items, 1):
        where = f"{path}: {key + ' ' if key else ''}item {number}"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} is not an object")
        name, value = _checked(item.get("name"), item.get("value"), where)
        domain = item.get("domain", item.get("host"))
        if domain is None:
            if site is None:
                raise InvalidRequest(f"{where}: cookie {name!r} has no domain: give the site (--site)")
            domain = _host(site)
        if not isinstance(domain, str) or not _domain_origin(domain):
            raise InvalidRequest(f"{where}: cookie {name!r} has an invalid domain")
        if not item.get("session") and _expired(_expiry(item, where), now):
            continue
        domain = domain.strip().lower()
        host_only = bool(item["hostOnly"]) if "hostOnly" in item else not domain.startswith(".")
        yield _Cookie(name, value, domain, host_only, _domain_origin(domain))


def _expiry(item: dict[str, Any], where: str) -> float | None:
    for key in ("expirationDate", "expires", "expiry"):
        raw = item.get(key)
        if raw is None or isinstance(raw, bool):
            continue
        if isinstance(raw, int | float):
            return None if raw <= 0 else float(raw)  # -1 or 0: a session cookie
        if isinstance(raw, str):
            parsed = _date(raw)
            if parsed is not None:
                return parsed
        raise InvalidRequest(f"{where}: {key!r} is not a time")
    return None


def _date(text: str) -> float | None:
    """Unix seconds from a number, an ISO 8601 time or an HTTP date; None if it is none of them."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        return float(text)
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    with contextlib.suppress(ValueError, TypeError, IndexError):
        return parsedate_to_datetime(text).timestamp()
    return None


def _from_har(document: dict[str, Any], path: Path, now: float) -> Iterator[_Cookie]:
    """Each entry's request cookies (``cookies`` and the ``Cookie`` header) and response cookies
    (``cookies`` and ``Set-Cookie``), filed under the request's origin with its ``User-Agent``.
    Captured traffic holds third-party oddities, so a cookie no header can carry is skipped."""
    entries = document["log"].get("entries") if isinstance(document["log"], dict) else None
    if not isinstance(entries, list):
        raise InvalidRequest(f"{path}: a HAR file needs a list log.entries")
    for number, entry in enumerate(entries):
        where = f"{path}: log.entries[{number}]"
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("url"), str):
            raise InvalidRequest(f"{where}.request.url is missing")
        try:
            origin = site_of(request["url"])
        except InvalidRequest:
            continue  # data:, blob:, chrome-extension: and the like
        host = _host(origin)
        headers = _har_headers(request, f"{where}.request")
        agent = next((value for name, value in headers if name.lower() == "user-agent"), None)
        sent: list[tuple[Any, Any]] = [(c.get("name"), c.get("value"))
                                       for c in _har_list(request, "cookies", f"{where}.request")]
        for name, value in headers:
            if name.lower() == "cookie":
                sent += [_pair(part) for part in value.split(";") if part.strip()]
        for name, value in sent:
            if _usable(name, value):
                yield _Cookie(name, value, host, True, origin, agent)
        response = entry.get("response")
        if not isinstance(response, dict):
            continue
        set_cookies: list[tuple[Any, Any, Any]] = [
            _set_cookie(line, now) for name, value in _har_headers(response, f"{where}.response")
            if name.lower() == "set-cookie" for line in value.split("\n") if line.strip()]  # some join them
        for item in _har_list(response, "cookies", f"{where}.response"):
            expires = _date(item["expires"]) if isinstance(item.get("expires"), str) else None
            gone = expires is not None and expires <= now
            set_cookies.append((item.get("name"), None if gone else item.get("value"), item.get("domain")))
        for name, value, domain in set_cookies:
            if not _usable(name, "" if value is None else value):
                continue
            if isinstance(domain, str) and domain.strip() and _applies(domain.strip().lower(), False, host):
                yield _Cookie(name, value, domain.strip().lower(), False, origin, agent)
            else:
                yield _Cookie(name, value, host, True, origin, agent)


def _pair(text: str) -> tuple[str, str]:
    name, _, value = text.strip().partition("=")
    return name.strip(), value.strip()


def _usable(name: Any, value: Any) -> bool:
    return (isinstance(name, str) and isinstance(value, str) and bool(_NAME.fullmatch(name))
            and not _BAD_VALUE.search(value))


def _har_headers(message: dict[str, Any], where: str) -> list[tuple[str, str]]:
    return [(item["name"], item["value"]) for item in _har_list(message, "headers", where)
            if isinstance(item.get("name"), str) and isinstance(item.get("value"), str)]


def _har_list(message: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    items = message.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise InvalidRequest(f"{where}.{key} must be a list of objects")
    return items


def _set_cookie(header: str, now: float) -> tuple[str, str | None, str | None]:
    """(name, value or None when it deletes the cookie, Domain attribute) of a Set-Cookie header."""
    first, *attributes = header.split(";")
    name, _, value = first.partition("=")
    domain: str | None = None
    gone = False
    for attribute in attributes:
        key, _, argument = attribute.strip().partition("=")
        key = key.lower()
        if key == "domain":
            domain = argument.strip()
        elif key == "max-age":
            with contextlib.suppress(ValueError):
                gone = gone or int(argument) <= 0
        elif key == "expires":
            expires = _date(argument)
            gone = gone or (expires is not None and expires <= now)
    return name.strip(), None if gone else value.strip(), domain


# Netscape cookies.txt ---------------------------------------------------------------------------------


def _from_netscape(text: str, path: Path, now: float) -> Iterator[_Cookie]:
    """``domain  include-subdomains  path  secure  expiry  name  value``, tab-separated; a line that
    starts ``#HttpOnly_`` is a cookie, any other ``#`` line a comment."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("#HttpOnly_"):
            line = line[len("#HttpOnly_"):]
        elif line.startswith("#") or not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) == 6:  # an empty value whose tab an editor trimmed
            fields.append("")
        where = f"{path}, line {number}"
        if len(fields) != 7:
            raise InvalidRequest(f"{where}: expected 7 tab-separated fields (domain, subdomains, path, secure, "
                                 f"expiry, name, value), found {len(fields)}")
        domain, subdomains, _path, _secure, expiry, name, value = fields
        name, value = _checked(name, value, where)
        origin = _domain_origin(domain)
        if not origin:
            raise InvalidRequest(f"{where}: cookie {name!r} has an invalid domain")
        try:
            expires = float(expiry)
        except ValueError:
            raise InvalidRequest(f"{where}: the expiry of cookie {name!r} is not a number") from None
        if subdomains.upper() not in ("TRUE", "FALSE"):
            raise InvalidRequest(f"{where}: the second field must be TRUE or FALSE")
        if expires > 0 and _expired(expires, now):
            continue
        domain = domain.strip().lower()
        yield _Cookie(name, value, domain, subdomains.upper() == "FALSE" and not domain.startswith("."), origin)


# -- local browsers ------------------------------------------------------------------------------------


def from_browser(browser: str, *, domain: str, cookie_file: Path | None = None, key_file: Path | None = None,
                 user_agent: str | None = None) -> list[SiteCookies]:
    """The cookies a local browser sends to ``domain`` (a host or URL), read from its profile (or
    ``cookie_file``: Chrome's ``Cookies``, Firefox's ``cookies.sqlite``; ``key_file``: Chrome's
    ``Local State`` on Windows) with rookiepy, else browser_cookie3. One entry, or none."""
    name = browser.strip().lower()
    if name not in BROWSERS:
        raise InvalidRequest(f"unknown browser {browser!r}; choose one of {', '.join(BROWSERS)}", param="browser")
    site = site_of(domain)
    host = _host(site)
    query = _query_domain(host)
    if cookie_file is not None and not cookie_file.is_file():
        raise InvalidRequest(f"no cookie database at {cookie_file}")
    readers = [_read_rookiepy, _read_browser_cookie3] if key_file is None else [_read_browser_cookie3]
    problems: list[str] = []
    raw: list[tuple[str, str, str, float | None]] | None = None
    for reader in readers:
        try:
            raw = reader(name, query, cookie_file, key_file)
        except ImportError:
            continue
        except Exception as exc:  # each library fails in its own ways (keyring, sqlite, decryption)
            problems.append(_first_line(exc))
            continue
        break
    if raw is None:
        if not problems:
            raise InvalidRequest(f"reading cookies from a browser needs rookiepy or browser-cookie3: {INSTALL_HINT}")
        raise InvalidRequest(f"cannot read {name}'s cookies: {problems[0]}")
    now = time.time()
    cookies = []
    for cookie_name, value, cookie_domain, expires in raw:
        if _usable(cookie_name, value) and not _expired(expires, now):
            cookie_domain = cookie_domain.lower()
            cookies.append(_Cookie(cookie_name, value, cookie_domain, not cookie_domain.startswith("."), site))
    return _group(cookies, site, user_agent, name, now)


def _query_domain(host: str) -> str:
    """What to ask the libraries for: the host's last two labels (they match substrings, and a
    cookie for ``.example.com`` is sent to ``chat.example.com``); the answer is filtered after."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return host
    return ".".join(host.split(".")[-2:])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact(text[0]) if text else type(exc).__name__


def _read_rookiepy(browser: str, domain: str, cookie_file: Path | None,
                   key_file: Path | None) -> list[tuple[str, str, str, float | None]]:
    rookiepy = importlib.import_module("rookiepy")
    if cookie_file is None:
        found = getattr(rookiepy, browser)([domain])
    elif browser == "firefox":
        found = rookiepy.firefox_based(str(cookie_file), [domain])
    else:
        found = rookiepy.chromium_based(str(cookie_file), [domain])
    return [(str(c["name"]), c["value"], str(c["domain"]), c.get("expires")) for c in found]


def _read_browser_cookie3(browser: str, domain: str, cookie_file: Path | None,
                          key_file: Path | None) -> list[tuple[str, str, str, float | None]]:
    library = importlib.import_module("browser_cookie3")
    jar = getattr(library, browser)(cookie_file=None if cookie_file is None else str(cookie_file),
                                    domain_name=domain, key_file=None if key_file is None else str(key_file))
    return [(c.name, c.value, c.domain, c.expires) for c in jar]
