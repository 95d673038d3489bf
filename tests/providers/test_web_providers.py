"""Web chat providers against sites behind bot protection: challenge pages become
ChallengeRequired (one request, cooldown, the router moves on), imported browser cookies get a
cookie-gated replica to answer, rejected cookies are banned, and impersonation puts a real
browser's TLS fingerprint on the wire."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from patchbay.cli import cli
from patchbay.errors import ChallengeRequired, ConnectionFailed, InvalidRequest, ProtocolError
from patchbay.net.session import HTTPSession
from patchbay.providers import AiChatOnline, Liaobots
from patchbay.providers.web import cookie_store
from patchbay.redact import redact
from patchbay.routing import MemoryStateStore, Router, Target
from patchbay.secrets.cookies import site_of
from patchbay.settings import load_settings
from tests.replicas.aichatonline import AiChatOnlineReplica
from tests.replicas.liaobots import LiaobotsReplica
from tests.replicas.tls_hello import HelloRecorder, browser_profiles, ja4, ja4_without_sni

HELLO = [{"role": "user", "content": "hello"}]
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/152.0.0.0 Safari/537.36"


pytestmark = pytest.mark.usefixtures("clean_liaobots")


def import_cookies(path: Path, site: str, *extra: str) -> None:
    result = CliRunner().invoke(cli, ["cookies", "import", str(path), "--site", site, *extra])
    assert result.exit_code == 0, result.output
    assert path.read_text() and all(value not in result.output for value in _values(path))


def _values(path: Path) -> list[str]:
    return [word for word in path.read_text().replace('"', " ").replace("\t", " ").split() if word.startswith("clr-")]


# -- challenge pages ------------------------------------------------------------------------------------


async def test_a_challenge_page_is_challenge_required_without_the_page(liaobots_replica: LiaobotsReplica) -> None:
    liaobots_replica.scenario = "challenge"
    with pytest.raises(ChallengeRequired) as info:
        await Liaobots.create_async("gpt-4o", HELLO, base_url=liaobots_replica.base_url)
    error = info.value
    assert error.status == 403 and error.to_dict()["code"] == "challenge_required"
    assert "Cloudflare browser challenge" in error.message and "patchbay cookies import" in error.message
    assert "<" not in error.message and "Just a moment" not in error.message  # no HTML reaches anyone
    assert len(liaobots_replica.requests) == 1  # not retried on the same target


async def test_the_router_cools_a_challenged_target_down_and_moves_on(
        liaobots_replica: LiaobotsReplica, aichatonline_replica: AiChatOnlineReplica) -> None:
    liaobots_replica.scenario = "challenge"
    store = MemoryStateStore()
    challenged = Target(Liaobots, "gpt-4o", base_url=liaobots_replica.base_url)
    router = Router.configure({"chat": [challenged, Target(AiChatOnline, "gpt-4o-mini",
                                                           base_url=aichatonline_replica.base_url)]},
                              strategy="priority", state=store)
    stream = router.stream("chat", HELLO)
    text = "".join([event.text async for event in stream if hasattr(event, "text")])
    assert text == aichatonline_replica.answer
    assert len(liaobots_replica.requests) == 1
    until = await store.cooldown_until(challenged.key("chat"))
    assert until is not None and until > time.monotonic()  # cooled down after one failure
    # The next request skips the cooled-down target: the site sees nothing more.
    assert await router.create_async("chat", HELLO) == aichatonline_replica.answer
    assert len(liaobots_replica.requests) == 1


# -- imported cookies -----------------------------------------------------------------------------------


def har(site: str, name: str, value: str, user_agent: str) -> str:
    return json.dumps({"log": {"version": "1.2", "creator": {"name": "Chromium", "version": "152"}, "entries": [{
        "startedDateTime": "2026-12-01T10:00:00.000Z", "time": 12,
        "request": {"method": "GET", "url": f"{site}/", "httpVersion": "HTTP/1.1",
                    "headers": [{"name": "User-Agent", "value": user_agent}],
                    "cookies": [{"name": name, "value": value}], "queryString": [], "headersSize": -1,
                    "bodySize": 0},
        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "headers": [], "cookies": [],
                     "content": {"size": 0, "mimeType": "text/html"}, "redirectURL": "", "headersSize": -1,
                     "bodySize": 0},
        "cache": {}, "timings": {"send": 0, "wait": 10, "receive": 2}}]}})


def cookie_json(site: str, name: str, value: str) -> str:
    host = site.split("://", 1)[1].split(":")[0]
    return json.dumps([{"name": name, "value": value, "domain": host, "path": "/", "secure": False,
                        "httpOnly": True, "expirationDate": time.time() + 86400}])


def netscape(site: str, name: str, value: str) -> str:
    host = site.split("://", 1)[1].split(":")[0]
    return f"# Netscape HTTP Cookie File\n{host}\tFALSE\t/\tFALSE\t{int(time.time()) + 86400}\t{name}\t{value}\n"


@pytest.mark.parametrize("form", ["har", "json", "netscape"])
async def test_imported_cookies_get_past_a_cookie_gated_site(
        liaobots_replica: LiaobotsReplica, tmp_path: Path, form: str) -> None:
    site = liaobots_replica.base_url
    assert site is not None
    liaobots_replica.scenario = "cookie_gated"
    name, value = liaobots_replica.clearance_cookie
    with pytest.raises(ChallengeRequired):  # before the import
        await Liaobots.create_async("gpt-4o", HELLO, base_url=site)
    path = tmp_path / f"cookies.{form}"
    if form == "har":
        liaobots_replica.clearance_user_agent = BROWSER_UA  # the HAR says which browser earned it
        path.write_text(har(site, name, value, BROWSER_UA))
        import_cookies(path, site)
    else:
        path.write_text(cookie_json(site, name, value) if form == "json" else netscape(site, name, value))
        import_cookies(path, site)
    challenged = liaobots_replica.challenged
    assert await Liaobots.create_async("gpt-4o", HELLO, base_url=site) == liaobots_replica.answer
    assert liaobots_replica.challenged == challenged
    assert all(r.cookies.get(name) == value for r in liaobots_replica.requests[-3:])  # login, user, chat
    assert redact(f"cookie {value}") == "cookie [REDACTED]"
    stored = cookie_store().path(site_of(site))
    assert stored.stat().st_mode & 0o777 == 0o600


async def test_rejected_cookies_are_banned_until_imported_again(
        liaobots_replica: LiaobotsReplica, tmp_path: Path) -> None:
    site = liaobots_replica.base_url
    assert site is not None
    liaobots_replica.scenario = "cookie_gated"
    name, value = liaobots_replica.clearance_cookie
    stale = tmp_path / "stale.txt"
    stale.write_text(netscape(site, name, "clr-expired-by-the-site-000000"))
    import_cookies(stale, site)
    with pytest.raises(ChallengeRequired):
        await Liaobots.create_async("gpt-4o", HELLO, base_url=site)
    assert cookie_store().get(site_of(site)) is None  # rejected: no longer sent
    entry = next(e for e in cookie_store().entries() if e.site == site_of(site))
    assert entry.rejected is not None and "challenge" in entry.rejected
    listed = CliRunner().invoke(cli, ["cookies", "list", "--json"])
    assert "clr-expired" not in listed.output and "challenge" in listed.output
    before = len(liaobots_replica.requests)
    with pytest.raises(ChallengeRequired):
        await Liaobots.create_async("gpt-4o", HELLO, base_url=site)
    assert all(name not in r.cookies for r in liaobots_replica.requests[before:])
    fresh = tmp_path / "fresh.txt"
    fresh.write_text(netscape(site, name, value))
    import_cookies(fresh, site)
    assert await Liaobots.create_async("gpt-4o", HELLO, base_url=site) == liaobots_replica.answer


async def test_aichatonline_sends_imported_cookies_too(aichatonline_replica: AiChatOnlineReplica,
                                                      tmp_path: Path) -> None:
    site = aichatonline_replica.base_url
    assert site is not None
    aichatonline_replica.scenario = "cookie_gated"
    name, value = aichatonline_replica.clearance_cookie
    path = tmp_path / "cookies.json"
    path.write_text(cookie_json(site, name, value))
    import_cookies(path, site)
    assert await AiChatOnline.create_async("", HELLO, base_url=site) == aichatonline_replica.answer


# -- impersonation --------------------------------------------------------------------------------------


@pytest.mark.process  # openssl makes the replica's certificate
@pytest.mark.parametrize("profile", ["chrome", "firefox"])
async def test_an_impersonated_request_carries_the_browsers_tls_fingerprint(tmp_path: Path, profile: str) -> None:
    async with HelloRecorder(tmp_path) as server:
        async with HTTPSession(impersonate=profile, verify_ssl=False) as http, \
                http.request("GET", server.url) as response:
            assert response.status == 200
            assert json.loads(await http.read_body(response))["ok"]
        async with HTTPSession(verify_ssl=False) as http, http.request("GET", server.url) as response:
            assert response.status == 200  # the pool: Python's own TLS
    impersonated, plain = server.hellos
    assert ja4(impersonated) == ja4_without_sni(browser_profiles()[profile])  # no SNI to an IP address
    assert ja4(plain) != ja4(impersonated)


@pytest.mark.process
async def test_web_providers_impersonate_chrome_over_https(tmp_path: Path) -> None:
    """AiChatOnline's request to an https site goes out with Chrome's fingerprint (the recorder is
    not the service, so the answer itself is refused: its certificate, or its reply)."""
    async with HelloRecorder(tmp_path) as server:
        with pytest.raises((ConnectionFailed, ProtocolError)):
            await AiChatOnline.create_async("", HELLO, base_url=server.url.rstrip("/"))
    assert server.hellos and ja4(server.hellos[0]) == ja4_without_sni(browser_profiles()["chrome"])


# -- configuration --------------------------------------------------------------------------------------


def test_the_browser_profile_is_a_per_provider_config_option(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[providers.Liaobots]\nimpersonate = "firefox"\n\n'
                      '[providers.AiChatOnline]\nimpersonate = false\n')
    settings = load_settings(config)
    liaobots, aichatonline = settings.provider_class("Liaobots"), settings.provider_class("AiChatOnline")
    assert liaobots.impersonate == "firefox" and issubclass(liaobots, Liaobots)
    assert liaobots.auth_codes is Liaobots.auth_codes and liaobots.cookies is Liaobots.cookies  # shared
    assert aichatonline.impersonate is None
    assert Liaobots.impersonate == "chrome"  # the registered class is untouched
    for table, message in [('impersonate = "netscape4"', "no browser profile 'netscape4'"),
                           ('base_url = "http://127.0.0.1:9"', "only impersonate, prices can be set")]:
        config.write_text(f"[providers.Liaobots]\n{table}\n")
        with pytest.raises(InvalidRequest, match=message):
            load_settings(config).provider_class("Liaobots")
    config.write_text('[providers.mine]\nbase_url = "http://127.0.0.1:9/v1"\nimpersonate = "chrome"\n')
    with pytest.raises(InvalidRequest, match="impersonate applies to the web chat providers"):
        load_settings(config).provider_class("mine")
