"""``patchbay cookies``: a real browser's cookies for web chat services behind browser challenges.

``import FILE`` reads a HAR capture, a cookie-JSON export (Cookie-Editor, EditThisCookie) or a
Netscape ``cookies.txt``; ``import --from-browser NAME --site URL`` reads a local browser's profile.
The cookies are stored per site in the config directory (readable by the owner only) with the
browser user-agent they belong to, and the site's provider sends them. Values are never printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from patchbay.cli.common import fail, json_option, reported, verbose_option
from patchbay.cli.output import ago, table
from patchbay.secrets.cookies import BROWSERS

if TYPE_CHECKING:
    from patchbay.secrets.cookies import SiteCookies

__all__ = ["COMMANDS", "cookies"]

CLEARANCE = "cf_clearance"  # Cloudflare's challenge cookie, valid only with the user-agent that earned it


@click.group()
def cookies() -> None:
    """Browser cookies for web chat services behind browser challenges (Cloudflare)."""


@cookies.command(name="import")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from-browser", "browser", type=click.Choice(BROWSERS, case_sensitive=False), default=None,
              help="Read the cookies from this local browser's profile instead of a file (needs --site).")
@click.option("--site", default=None, metavar="URL",
              help="Keep only the cookies this site gets, filed under it (needed for --from-browser).")
@click.option("--user-agent", default=None, metavar="UA",
              help="The browser's user-agent (navigator.userAgent); a HAR file records it itself.")
@click.option("--cookie-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --from-browser: the browser's cookie database (Cookies, cookies.sqlite).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --from-browser: Chrome's 'Local State' key file (Windows).")
@verbose_option
def import_cookies(file: Path | None, browser: str | None, site: str | None, user_agent: str | None,
                   cookie_file: Path | None, key_file: Path | None, verbose: bool) -> None:
    """Import cookies from FILE (HAR, cookie-JSON, cookies.txt) or from a browser (--from-browser).

    Each site's cookies replace the ones stored for it, a rejected set too."""
    from patchbay.secrets.cookies import CookieStore, from_browser, parse_cookie_file

    if (file is None) == (browser is None):
        raise click.UsageError("give a FILE to import, or --from-browser NAME (not both)")
    if browser is not None and site is None:
        raise click.UsageError("--from-browser needs --site, the site whose cookies to read")
    if browser is None and (cookie_file is not None or key_file is not None):
        raise click.UsageError("--cookie-file and --key-file go with --from-browser")
    if user_agent is not None and not user_agent.strip():
        raise click.UsageError("--user-agent is empty")
    with reported(verbose):
        if browser is not None:
            assert site is not None
            entries = from_browser(browser, domain=site, cookie_file=cookie_file, key_file=key_file,
                                   user_agent=user_agent)
            if not entries:
                fail(f"{browser} has no unexpired cookies for {site}")
        else:
            assert file is not None
            entries = parse_cookie_file(file, site=site, user_agent=user_agent)
        store = CookieStore()
        for entry in entries:
            store.put(entry)
    for entry in entries:
        agent = "with its user-agent" if entry.user_agent else "without a user-agent"
        count = len(entry.cookies)
        click.echo(f"Imported {count} cookie{'s' if count != 1 else ''} for {entry.site} ({agent})", err=True)
    missing = [entry.site for entry in entries if CLEARANCE in entry.cookies and not entry.user_agent]
    if missing:
        click.echo(f"Warning: {CLEARANCE} works only with the user-agent of the browser that got it; import "
                   f"again with --user-agent (the browser's navigator.userAgent) for {', '.join(missing)}", err=True)


@cookies.command(name="list")
@json_option
@verbose_option
def list_cookies(as_json: bool, verbose: bool) -> None:
    """List the stored cookies by site: how many, user-agent or not, source, age, rejected or not.

    Cookie values are never shown."""
    from patchbay.secrets.cookies import CookieStore

    with reported(verbose):
        entries = CookieStore().entries()
    if as_json:
        click.echo(json.dumps([_plain(entry) for entry in entries], indent=2, ensure_ascii=False))
    elif not entries:
        click.echo("No cookies stored (patchbay cookies import FILE).", err=True)
    else:
        now = time.time()
        table(["site", "cookies", "user-agent", "source", "imported", "rejected"],
              [[entry.site, str(len(entry.cookies)), "yes" if entry.user_agent else "no", entry.source,
                ago(entry.imported_at, now), entry.rejected or "-"] for entry in entries],
              flexible=("rejected",))


@cookies.command(name="remove")
@click.argument("site")
@verbose_option
def remove_cookies(site: str, verbose: bool) -> None:
    """Forget the cookies stored for SITE (a URL or host)."""
    from patchbay.secrets.cookies import CookieStore, site_of

    with reported(verbose):
        origin = site_of(site)
        removed = CookieStore().remove(origin)
    if not removed:
        fail(f"no cookies are stored for {origin} (see `patchbay cookies list`)")
    click.echo(f"Removed the cookies for {origin}", err=True)


def _plain(entry: SiteCookies) -> dict[str, Any]:
    """An entry for ``--json``: the cookie names, never their values."""
    return {"site": entry.site, "cookies": len(entry.cookies), "names": sorted(entry.cookies),
            "user_agent": entry.user_agent, "source": entry.source, "imported_at": entry.imported_at,
            "rejected": entry.rejected}


COMMANDS = [cookies]
