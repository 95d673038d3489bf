"""The session's cookie jar (patchbay.net.cookiejar): what is kept from Set-Cookie and what is sent."""

from __future__ import annotations

from yarl import URL

from patchbay.net.cookiejar import CookieJar
from patchbay.redact import redact

SITE = URL("https://chat.example.com/api/chat")


def test_set_cookie_is_kept_and_sent_to_the_same_host_and_path() -> None:
    jar = CookieJar()
    jar.update_from(URL("https://chat.example.com/login"), ["session=s3cr3t-value-1; Path=/; HttpOnly"])
    assert jar.header_for(SITE) == "session=s3cr3t-value-1"
    assert jar.header_for(URL("https://other.example.com/")) is None  # host-only
    assert redact("session s3cr3t-value-1") == "session [REDACTED]"


def test_domain_cookies_reach_subdomains_and_foreign_domains_are_refused() -> None:
    jar = CookieJar()
    jar.update_from(URL("https://chat.example.com/"), ["wide=1; Domain=.example.com", "evil=1; Domain=attacker.net"])
    assert jar.header_for(URL("https://api.example.com/")) == "wide=1"
    assert jar.header_for(URL("https://attacker.net/")) is None


def test_paths_expiry_and_secure() -> None:
    jar = CookieJar()
    origin = URL("https://chat.example.com/")
    jar.update_from(origin, ["deep=1; Path=/api", "root=2; Path=/", "gone=3; Max-Age=0", "safe=4; Secure"])
    assert jar.header_for(URL("https://chat.example.com/api/chat")) == "deep=1; root=2; safe=4"  # longest path first
    assert jar.header_for(URL("https://chat.example.com/apiary")) == "root=2; safe=4"
    assert jar.header_for(URL("http://chat.example.com/")) == "root=2"  # Secure: https only
    jar.update_from(origin, ["root=2; Expires=Wed, 21 Oct 2015 07:28:00 GMT"])  # a past expiry deletes it
    assert jar.header_for(URL("https://chat.example.com/")) == "safe=4"


def test_a_malformed_set_cookie_is_ignored_and_clear_forgets_a_host() -> None:
    jar = CookieJar()
    jar.update_from(SITE, ['bad"name=1; =;;', "ok=1"])
    assert jar.header_for(SITE) == "ok=1"
    jar.set("http://127.0.0.1:8080", {"cf_clearance": "imported-clearance-1"})
    assert "http://127.0.0.1:8080/x" in jar  # loopback: Secure-less and port-less matching
    jar.clear("http://127.0.0.1:8080")
    assert "http://127.0.0.1:8080/x" not in jar and jar.header_for(SITE) == "ok=1"
