"""Imported browser cookies (patchbay.secrets.cookies): the three file formats, local browser
databases (a real Firefox cookies.sqlite, a Chrome-on-Linux Cookies database with v10-encrypted
values), the private per-site store, rejection, and values kept out of every message."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import sqlite3
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from patchbay.errors import InvalidRequest
from patchbay.redact import redact
from patchbay.secrets.cookies import CookieStore, SiteCookies, from_browser, parse_cookie_file, site_of

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"


def value(label: str) -> str:
    """A cookie value no other test uses (so 'redacted' is not true because of another test)."""
    return f"{label}-{secrets.token_hex(12)}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "home"
    monkeypatch.setenv("PATCHBAY_HOME", str(directory))
    return directory


def error_of(path: Path, **options: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_cookie_file(path, **options)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def by_site(entries: list[SiteCookies]) -> dict[str, SiteCookies]:
    return {entry.site: entry for entry in entries}


# -- sites ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "origin"), [
    ("https://LiaoBots.work/chat?x=1", "https://liaobots.work"),
    ("liaobots.work", "https://liaobots.work"),
    ("https://liaobots.work:443", "https://liaobots.work"),
    ("http://127.0.0.1:80/", "http://127.0.0.1"),
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
    ("https://[::1]:8443/", "https://[::1]:8443"),
    ("www.example.com.", "https://www.example.com"),
])
def test_site_of_is_the_normalised_origin(given: str, origin: str) -> None:
    assert site_of(given) == origin


@pytest.mark.parametrize("given", ["", "ftp://example.com", "https://", "https://exa mple.com", "https://x:99999"])
def test_site_of_refuses_what_is_not_an_http_site(given: str) -> None:
    with pytest.raises(InvalidRequest):
        site_of(given)


# -- HAR -----------------------------------------------------------------------------------------------


def har_entry(url: str, *, request_cookies: Sequence[dict[str, Any]] = (), cookie_header: str | None = None,
              user_agent: str | None = UA, set_cookies: Sequence[str] = (),
              response_cookies: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """One HAR 1.2 entry, as Firefox's network panel saves it."""
    headers = [{"name": "Host", "value": urlsplit(url).netloc}, {"name": "Accept", "value": "*/*"}]
    if user_agent:
        headers.append({"name": "User-Agent", "value": user_agent})
    if cookie_header:
        headers.append({"name": "Cookie", "value": cookie_header})
    return {
        "pageref": "page_1", "startedDateTime": "2026-05-01T10:00:00.000+00:00", "time": 120.5,
        "request": {"method": "GET", "url": url, "httpVersion": "HTTP/2", "cookies": list(request_cookies),
                    "headers": headers, "queryString": [], "headersSize": -1, "bodySize": 0},
        "response": {"status": 200, "statusText": "", "httpVersion": "HTTP/2", "cookies": list(response_cookies),
                     "headers": [{"name": "content-type", "value": "text/html"},
                                 *({"name": "set-cookie", "value": line} for line in set_cookies)],
                     "content": {"size": 10, "mimeType": "text/html", "text": "<html></html>"},
                     "redirectURL": "", "headersSize": -1, "bodySize": -1},
        "cache": {}, "timings": {"blocked": -1, "dns": 0, "connect": 0, "ssl": 0, "send": 0, "wait": 100,
                                 "receive": 20},
    }


def write_har(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "Firefox", "version": "128.0"},
                                        "browser": {"name": "Firefox", "version": "128.0"},
                                        "pages": [{"id": "page_1", "title": "Liaobots",
                                                   "startedDateTime": "2026-05-01T10:00:00.000+00:00",
                                                   "pageTimings": {}}],
                                        "entries": entries}}, indent=1), encoding="utf-8")
    return path


def test_a_har_gives_each_request_origin_its_cookies_and_user_agent(tmp_path: Path) -> None:
    session, clearance, bm, stale, tracker = (value(n) for n in ("sess", "clear", "bm", "stale", "ga"))
    path = write_har(tmp_path / "liaobots.har", [
        har_entry("https://liaobots.work/", request_cookies=[{"name": "session", "value": session},
                                                             {"name": "stale", "value": stale}],
                  cookie_header=f"session={session}; stale={stale}",
                  set_cookies=[f"__cf_bm={bm}; path=/; expires=Fri, 01-Jan-2100 00:00:00 GMT; domain=.liaobots.work; "
                               "HttpOnly; Secure; SameSite=None",
                               "stale=deleted; Max-Age=0; Path=/"]),
        har_entry("https://liaobots.work/cdn-cgi/challenge-platform/h/g/flow/ov1",
                  response_cookies=[{"name": "cf_clearance", "value": clearance, "path": "/",
                                     "domain": ".liaobots.work", "expires": "2100-01-01T00:00:00.000Z",
                                     "httpOnly": True, "secure": True},
                                    {"name": "gone", "value": value("gone"), "expires": "2001-01-01T00:00:00Z"}]),
        har_entry("https://www.google-analytics.com/g/collect?v=2", cookie_header=f"_ga={tracker}",
                  user_agent=None),
        har_entry("data:image/png;base64,AAAA"),
    ])
    entries = by_site(parse_cookie_file(path))
    assert sorted(entries) == ["https://liaobots.work", "https://www.google-analytics.com"]
    liaobots = entries["https://liaobots.work"]
    assert liaobots.cookies == {"session": session, "__cf_bm": bm, "cf_clearance": clearance}  # stale deleted
    assert liaobots.user_agent == UA and liaobots.source == "har" and liaobots.rejected is None
    assert entries["https://www.google-analytics.com"].cookies == {"_ga": tracker}
    assert entries["https://www.google-analytics.com"].user_agent is None

    [only] = parse_cookie_file(path, site="https://liaobots.work/chat", user_agent=CHROME_UA)
    assert only.site == "https://liaobots.work" and set(only.cookies) == {"session", "__cf_bm", "cf_clearance"}
    assert only.user_agent == CHROME_UA  # --user-agent wins over the recorded one


def test_a_har_without_cookies_says_how_to_export_them(tmp_path: Path) -> None:
    path = write_har(tmp_path / "sanitized.har", [har_entry("https://liaobots.work/")])
    assert "with sensitive data" in error_of(path)


# -- cookie-JSON ---------------------------------------------------------------------------------------


def cookie_editor(name: str, cookie_value: str, domain: str, *, expires: float | None = None) -> dict[str, Any]:
    """One cookie as the Cookie-Editor extension exports it."""
    item: dict[str, Any] = {"domain": domain, "hostOnly": not domain.startswith("."),
                            "httpOnly": True, "name": name, "path": "/", "sameSite": "no_restriction",
                            "secure": True, "session": expires is None, "storeId": "0", "value": cookie_value}
    if expires is not None:
        item["expirationDate"] = expires
    return item


def test_a_cookie_editor_export_is_grouped_by_domain_without_expired_cookies(tmp_path: Path) -> None:
    clearance, session, old, other = (value(n) for n in ("clear", "sess", "old", "other"))
    path = tmp_path / "cookies.json"
    path.write_text(json.dumps([
        cookie_editor("cf_clearance", clearance, ".liaobots.work", expires=time.time() + 86400),
        cookie_editor("session", session, "liaobots.work"),
        cookie_editor("old", old, "liaobots.work", expires=time.time() - 60),
        cookie_editor("pref", other, "example.com", expires=(time.time() + 60) * 1000),  # milliseconds
    ], indent=4), encoding="utf-8")
    entries = by_site(parse_cookie_file(path))
    assert entries["https://liaobots.work"].cookies == {"cf_clearance": clearance, "session": session}
    assert entries["https://example.com"].cookies == {"pref": other}
    assert all(entry.source == "json" and entry.user_agent is None for entry in entries.values())

    # A subdomain gets the domain cookie, not the other host's own cookie.
    [chat] = parse_cookie_file(path, site="https://chat.liaobots.work", user_agent=UA)
    assert chat.site == "https://chat.liaobots.work" and chat.cookies == {"cf_clearance": clearance}
    assert chat.user_agent == UA


def test_playwright_storage_state_and_a_plain_object(tmp_path: Path) -> None:
    session, token = value("sess"), value("tok")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"cookies": [
        {"name": "session", "value": session, "domain": "liaobots.work", "path": "/", "expires": -1,
         "httpOnly": True, "secure": True, "sameSite": "Lax"},
        {"name": "old", "value": value("old"), "domain": "liaobots.work", "path": "/", "expires": 1000.5,
         "httpOnly": False, "secure": True, "sameSite": "Lax"}], "origins": []}), encoding="utf-8")
    [entry] = parse_cookie_file(state)
    assert entry.site == "https://liaobots.work" and entry.cookies == {"session": session}

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"token": token}), encoding="utf-8")
    assert "--site" in error_of(plain)
    [entry] = parse_cookie_file(plain, site="http://127.0.0.1:8080")
    assert entry.site == "http://127.0.0.1:8080" and entry.cookies == {"token": token}


# -- cookies.txt ---------------------------------------------------------------------------------------


def test_a_netscape_cookies_txt_with_httponly_lines_and_comments(tmp_path: Path) -> None:
    clearance, session, other = value("clear"), value("sess"), value("other")
    later, earlier = int(time.time()) + 3600, int(time.time()) - 3600
    path = tmp_path / "cookies.txt"
    path.write_text("\n".join([
        "# Netscape HTTP Cookie File",
        "# https://curl.se/docs/http-cookies.html",
        "# This file was generated by libcurl! Edit at your own risk.",
        "",
        f"#HttpOnly_.liaobots.work\tTRUE\t/\tTRUE\t{later}\tcf_clearance\t{clearance}",
        f"liaobots.work\tFALSE\t/\tTRUE\t0\tsession\t{session}",
        f"liaobots.work\tFALSE\t/\tTRUE\t{earlier}\told\t{value('old')}",
        f"www.example.com\tFALSE\t/\tFALSE\t{later}\tpref\t{other}",
        "",
    ]), encoding="utf-8")
    entries = by_site(parse_cookie_file(path))
    assert entries["https://liaobots.work"].cookies == {"cf_clearance": clearance, "session": session}
    assert entries["https://www.example.com"].cookies == {"pref": other}
    assert {entry.source for entry in entries.values()} == {"netscape"}


# -- bad files -----------------------------------------------------------------------------------------


def test_bad_files_are_one_line_errors_naming_the_file_and_the_line_without_values(tmp_path: Path) -> None:
    secret = value("secret")
    txt = tmp_path / "broken.txt"
    txt.write_text(f"# Netscape HTTP Cookie File\n\n.liaobots.work\tTRUE\t/\tTRUE\t0\tok\t{value('ok')}\n"
                   f"liaobots.work TRUE / TRUE 0 session {secret}\n", encoding="utf-8")
    message = error_of(txt)
    assert str(txt) in message and "line 4" in message and secret not in message

    txt.write_text(f"liaobots.work\tFALSE\t/\tTRUE\tsoon\tsession\t{secret}\n", encoding="utf-8")
    message = error_of(txt)
    assert "line 1" in message and "expiry" in message and secret not in message

    txt.write_text(f"liaobots.work\tFALSE\t/\tTRUE\t0\tsession\t{secret};admin=1\n", encoding="utf-8")
    message = error_of(txt)
    assert "line 1" in message and "session" in message and secret not in message

    bad_json = tmp_path / "broken.json"
    bad_json.write_text('[\n  {"name": "session",\n   "value": ' + secret + "}\n]", encoding="utf-8")
    message = error_of(bad_json)
    assert str(bad_json) in message and "line 3" in message and secret not in message

    bad_json.write_text(json.dumps([cookie_editor("a", value("a"), "liaobots.work"),
                                    {"name": "session", "value": 12345678, "domain": "liaobots.work"}]))
    message = error_of(bad_json)
    assert "item 2" in message and "session" in message

    bad_json.write_text(json.dumps([{"name": "session", "value": secret}]))
    assert "--site" in error_of(bad_json)

    bad_har = write_har(tmp_path / "broken.har", [{"request": {"headers": []}}])
    assert "log.entries[0].request.url" in error_of(bad_har)

    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    assert str(empty) in error_of(empty)
    binary = tmp_path / "Cookies.bin"
    binary.write_bytes(b"SQLite format 3\x00\xff\xfe\x00")
    assert "UTF-8" in error_of(binary)
    assert "cannot read" in error_of(tmp_path / "missing.txt")

    only_other = tmp_path / "other.txt"
    only_other.write_text(f"example.com\tFALSE\t/\tTRUE\t0\tpref\t{secret}\n", encoding="utf-8")
    assert "https://liaobots.work" in error_of(only_other, site="liaobots.work")


# -- the entry -----------------------------------------------------------------------------------------


def test_an_entry_gives_the_cookie_header_and_masks_values_in_its_repr() -> None:
    clearance, session = value("clear"), value("sess")
    entry = SiteCookies(site="HTTPS://Liaobots.work:443", cookies={"cf_clearance": clearance, "session": session},
                        user_agent=UA, source="json", imported_at=1.0)
    assert entry.site == "https://liaobots.work"
    assert entry.header() == f"cf_clearance={clearance}; session={session}"
    for text in (repr(entry), str(entry), repr([entry])):
        assert clearance not in text and session not in text and "cf_clearance" in text
    assert entry.fingerprint() == dataclasses.replace(entry, rejected="x").fingerprint()
    assert entry.fingerprint() != dataclasses.replace(entry, cookies={"session": session}).fingerprint()
    assert clearance not in entry.fingerprint()


# -- the store -----------------------------------------------------------------------------------------


def entry_for(site: str = "https://liaobots.work", **cookies: str) -> SiteCookies:
    return SiteCookies(site=site, cookies=cookies or {"session": value("sess")}, user_agent=UA, source="har",
                       imported_at=time.time())


def test_the_store_keeps_one_private_file_per_site_in_the_config_directory(home: Path) -> None:
    store = CookieStore()
    assert store.directory == home / "cookies"
    first, second = entry_for(), entry_for("http://127.0.0.1:8080")
    path = store.put(first)
    store.put(second)
    assert path.parent == home / "cookies"
    assert stat.S_IMODE(os.stat(home / "cookies").st_mode) == 0o700
    assert sorted(p.name for p in (home / "cookies").iterdir()) == ["http_127.0.0.1%3A8080.json",
                                                                    "https_liaobots.work.json"]
    for file in (home / "cookies").iterdir():
        assert stat.S_IMODE(os.stat(file).st_mode) == 0o600
    assert store.get("liaobots.work") == first
    assert store.get("http://127.0.0.1:8080/v1/chat") == second
    assert store.get("https://example.com") is None
    assert store.entries() == [second, first]  # by site
    assert store.remove("https://liaobots.work/") and not store.remove("https://liaobots.work")
    assert store.get("https://liaobots.work") is None and store.entries() == [second]


def test_a_put_replaces_the_file_atomically_and_a_failed_write_leaves_the_old_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CookieStore(tmp_path / "jar")
    old = entry_for()
    path = store.put(old)
    inode = os.stat(path).st_ino
    new = entry_for(session=value("new"))
    store.put(new)
    assert os.stat(path).st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert store.get(old.site) == new

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("patchbay.secrets.cookies.json.dump", broken)
    with pytest.raises(OSError):
        store.put(entry_for(session=value("lost")))
    monkeypatch.undo()
    assert store.get(old.site) == new
    assert [p.name for p in (tmp_path / "jar").iterdir()] == [path.name]  # no temporary file left behind


def test_a_rejected_entry_is_not_sent_again_until_it_is_imported_again(home: Path) -> None:
    store = CookieStore()
    entry = entry_for()
    store.put(entry)
    secret_in_reason = value("upstream")
    stored = store.get(entry.site)
    assert stored is not None
    store.reject(entry.site, f"HTTP 403: Cloudflare challenge ({secret_in_reason})")
    assert store.get(entry.site) is None
    [listed] = store.entries()
    assert listed.rejected is not None and listed.rejected.startswith("HTTP 403: Cloudflare challenge")
    assert listed.cookies == entry.cookies

    fresh = entry_for(session=value("fresh"))
    store.put(fresh)
    assert store.get(entry.site) == fresh
    store.reject(entry.site, "stale request", entry=entry)  # failed with the old cookies: the new ones stay
    assert store.get(entry.site) == fresh
    store.reject(entry.site, "refused", entry=fresh)
    assert store.get(entry.site) is None
    store.reject("https://example.com", "nothing stored")  # nothing to do
    assert [e.site for e in store.entries()] == [entry.site]


def test_values_become_secrets_when_read(tmp_path: Path) -> None:
    store = CookieStore(tmp_path / "jar")
    long_value, short_value = value("session"), "en-US"
    store.put(entry_for(session=long_value, lang=short_value))
    assert long_value in redact(f"sent {long_value}")  # not registered by storing it
    entry = store.get("https://liaobots.work")
    assert entry is not None and entry.cookies["session"] == long_value
    assert long_value not in redact(f"upstream said: session={long_value}")
    assert redact("lang=en-US") == "lang=en-US"  # short preference values would redact ordinary text

    path = tmp_path / "cookies.txt"
    parsed = value("parsed")
    path.write_text(f"liaobots.work\tFALSE\t/\tTRUE\t0\tsession\t{parsed}\n", encoding="utf-8")
    parse_cookie_file(path)
    assert parsed not in redact(parsed)


def test_files_the_store_did_not_write_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CookieStore(tmp_path / "jar")
    store.put(entry_for())
    (tmp_path / "jar" / "https_broken.example.json").write_text("{not json", encoding="utf-8")
    moved = json.loads((tmp_path / "jar" / "https_liaobots.work.json").read_text(encoding="utf-8"))
    (tmp_path / "jar" / "https_example.com.json").write_text(json.dumps(moved), encoding="utf-8")
    assert [entry.site for entry in store.entries()] == ["https://liaobots.work"]
    assert store.get("https://example.com") is None and store.get("https://broken.example") is None
    assert "https_broken.example.json" in caplog.text


# -- local browsers ------------------------------------------------------------------------------------


def firefox_db(path: Path, rows: list[tuple[str, str, str, int]]) -> Path:
    """A Firefox cookies.sqlite (Firefox's moz_cookies schema); rows: (host, name, value, expiry)."""
    now_us = int(time.time() * 1_000_000)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE moz_cookies (id INTEGER PRIMARY KEY, originAttributes TEXT NOT NULL DEFAULT '', "
                   "name TEXT, value TEXT, host TEXT, path TEXT, expiry INTEGER, lastAccessed INTEGER, "
                   "creationTime INTEGER, isSecure INTEGER, isHttpOnly INTEGER, inBrowserElement INTEGER DEFAULT 0, "
                   "sameSite INTEGER DEFAULT 0, rawSameSite INTEGER DEFAULT 0, schemeMap INTEGER DEFAULT 0, "
                   "CONSTRAINT moz_uniqueid UNIQUE (name, host, path, originAttributes))")
        db.executemany("INSERT INTO moz_cookies (originAttributes, name, value, host, path, expiry, lastAccessed, "
                       "creationTime, isSecure, isHttpOnly, inBrowserElement, sameSite, rawSameSite, schemeMap) "
                       "VALUES ('', ?, ?, ?, '/', ?, ?, ?, 1, 1, 0, 0, 0, 2)",
                       [(name, text, host, expiry, now_us, now_us) for host, name, text, expiry in rows])
    return path


def chrome_db(path: Path, rows: list[tuple[str, str, str, int]], *, version: int = 23) -> Path:
    """A Chrome-on-Linux Cookies database with v10-encrypted values (AES-128-CBC, the 'peanuts'
    key); from meta version 24 the plaintext starts with the SHA-256 of the host. Rows: (host,
    name, value, expiry in Unix seconds)."""
    from Cryptodome.Cipher import AES
    from Cryptodome.Protocol.KDF import PBKDF2
    from Cryptodome.Util.Padding import pad

    key = PBKDF2("peanuts", b"saltysalt", 16, 1)

    def encrypt(host: str, text: str) -> bytes:
        plain = (hashlib.sha256(host.encode()).digest() if version >= 24 else b"") + text.encode()
        return b"v10" + AES.new(key, AES.MODE_CBC, b" " * 16).encrypt(pad(plain, 16))

    def nt(seconds: float) -> int:  # microseconds since 1601-01-01
        return int((seconds + 11644473600) * 1_000_000)

    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta(key LONGVARCHAR NOT NULL UNIQUE PRIMARY KEY, value LONGVARCHAR)")
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("version", str(version)), ("last_compatible_version", "23")])
        db.execute("CREATE TABLE cookies(creation_utc INTEGER NOT NULL, host_key TEXT NOT NULL, top_frame_site_key "
                   "TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, encrypted_value BLOB NOT NULL, path TEXT "
                   "NOT NULL, expires_utc INTEGER NOT NULL, is_secure INTEGER NOT NULL, is_httponly INTEGER NOT NULL, "
                   "last_access_utc INTEGER NOT NULL, has_expires INTEGER NOT NULL, is_persistent INTEGER NOT NULL, "
                   "priority INTEGER NOT NULL, samesite INTEGER NOT NULL, source_scheme INTEGER NOT NULL, "
                   "source_port INTEGER NOT NULL, last_update_utc INTEGER NOT NULL, source_type INTEGER NOT NULL, "
                   "has_cross_site_ancestor INTEGER NOT NULL, UNIQUE (host_key, top_frame_site_key, name, path, "
                   "source_scheme, source_port))")
        now = nt(time.time())
        db.executemany("INSERT INTO cookies VALUES (?, ?, '', ?, '', ?, '/', ?, 1, 1, ?, 1, 1, 1, 0, 2, 443, ?, 0, 0)",
                       [(now, host, name, encrypt(host, text), nt(expiry), now, now)
                        for host, name, text, expiry in rows])
    return path


@pytest.fixture
def no_keyring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the libraries away from a desktop keyring: the v10 key is the fixed 'peanuts' one."""
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def browser_rows(later: int) -> tuple[list[tuple[str, str, str, int]], dict[str, str]]:
    clearance, session, sub = value("clear"), value("sess"), value("sub")
    rows = [(".liaobots.work", "cf_clearance", clearance, later), ("liaobots.work", "session", session, later),
            ("liaobots.work", "old", value("old"), int(time.time()) - 3600),
            ("chat.liaobots.work", "chat_only", sub, later), ("example.com", "other", value("other"), later),
            ("notliaobots.work", "lookalike", value("look"), later)]
    return rows, {"cf_clearance": clearance, "session": session}


@pytest.mark.parametrize("library", ["rookiepy", "browser_cookie3"])
def test_firefox_cookies_sqlite_is_read_for_one_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     library: str) -> None:
    if library == "browser_cookie3":
        monkeypatch.setitem(sys.modules, "rookiepy", None)  # rookiepy missing: the fallback reads it
    rows, wanted = browser_rows(int(time.time()) + 3600)
    database = firefox_db(tmp_path / "cookies.sqlite", rows)
    [entry] = from_browser("Firefox", domain="https://liaobots.work/chat", cookie_file=database)
    assert entry.site == "https://liaobots.work" and entry.cookies == wanted
    assert entry.source == "firefox" and entry.user_agent is None
    assert wanted["session"] not in redact(wanted["session"])
    [chat] = from_browser("firefox", domain="chat.liaobots.work", cookie_file=database, user_agent=UA)
    assert chat.cookies == {"cf_clearance": wanted["cf_clearance"], "chat_only": rows[3][2]}
    assert chat.user_agent == UA
    assert from_browser("firefox", domain="nothing.example", cookie_file=database) == []


@pytest.mark.parametrize("version", [23, 24])
def test_chrome_linux_cookies_with_v10_encryption_are_decrypted(tmp_path: Path, no_keyring: None,
                                                                version: int) -> None:
    # rookiepy reads them offline; browser_cookie3 asks the D-Bus keyring first, and fails without one.
    rows, wanted = browser_rows(int(time.time()) + 3600)
    database = chrome_db(tmp_path / "Cookies", rows, version=version)
    [entry] = from_browser("chrome", domain="liaobots.work", cookie_file=database)
    assert entry.cookies == wanted and entry.source == "chrome"


def test_browser_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidRequest) as caught:
        from_browser("netscape", domain="liaobots.work")
    assert all(name in str(caught.value) for name in ("chrome", "chromium", "firefox", "edge", "brave"))
    with pytest.raises(InvalidRequest) as caught:
        from_browser("chrome", domain="liaobots.work", cookie_file=tmp_path / "missing")
    assert str(tmp_path / "missing") in str(caught.value)
    not_a_database = tmp_path / "Cookies"
    not_a_database.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidRequest) as caught:
        from_browser("chrome", domain="liaobots.work", cookie_file=not_a_database)
    assert "chrome" in str(caught.value) and "\n" not in str(caught.value)

    monkeypatch.setitem(sys.modules, "rookiepy", None)
    monkeypatch.setitem(sys.modules, "browser_cookie3", None)
    database = firefox_db(tmp_path / "cookies.sqlite", browser_rows(int(time.time()) + 60)[0])
    with pytest.raises(InvalidRequest) as caught:
        from_browser("firefox", domain="liaobots.work", cookie_file=database)
    assert "pip install 'patchbay[web]'" in str(caught.value)


def test_imported_entries_round_trip_through_the_store(tmp_path: Path) -> None:
    rows, wanted = browser_rows(int(time.time()) + 3600)
    [entry] = from_browser("firefox", domain="liaobots.work", cookie_file=firefox_db(tmp_path / "c.sqlite", rows))
    store = CookieStore(tmp_path / "jar")
    store.put(dataclasses.replace(entry, user_agent=UA))
    stored = store.get("https://liaobots.work")
    assert stored is not None and stored.cookies == wanted and stored.user_agent == UA
