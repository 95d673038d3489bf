"""``patchbay cookies import|list|remove`` through click's CliRunner: what is stored where, what is
said (sites and counts, never a cookie value), and the exit statuses of mistakes."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from patchbay.cli import cli
from patchbay.secrets.cookies import CookieStore
from tests.secrets.test_cookies import CHROME_UA, UA, browser_rows, chrome_db, firefox_db, har_entry, value, write_har


class Runner:
    """Runs the CLI with PATCHBAY_HOME in tmp_path and remembers every output, to check that no
    cookie value ever appears in one."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner()
        self.outputs: list[str] = []

    def __call__(self, *args: str) -> Result:
        result = self.runner.invoke(cli, list(args), env={"PATCHBAY_HOME": str(self.home)}, catch_exceptions=False)
        self.outputs.append(result.output)
        return result

    def assert_never_shown(self, values: list[str]) -> None:
        for output in self.outputs:
            for secret in values:
                assert secret not in output


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runner:
    home = tmp_path / "home"
    monkeypatch.setenv("PATCHBAY_HOME", str(home))  # CookieStore() in the test reads the same directory
    return Runner(home)


def test_import_a_har_then_list_and_remove(tmp_path: Path, run: Runner) -> None:
    session, clearance = value("sess"), value("clear")
    har = write_har(tmp_path / "liaobots.har", [
        har_entry("https://liaobots.work/", cookie_header=f"session={session}",
                  set_cookies=[f"cf_clearance={clearance}; Domain=.liaobots.work; Path=/; Secure; HttpOnly"]),
        har_entry("https://cdn.example.net/app.js", cookie_header=f"cdn={value('cdn')}"),
    ])
    imported = run("cookies", "import", str(har), "--site", "https://liaobots.work")
    assert imported.exit_code == 0, imported.output
    assert "Imported 2 cookies for https://liaobots.work (with its user-agent)" in imported.stderr
    path = run.home / "cookies" / "https_liaobots.work.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert [entry.site for entry in CookieStore().entries()] == ["https://liaobots.work"]  # cdn.example.net filtered

    listed = run("cookies", "list", "--json")
    assert listed.exit_code == 0
    [row] = json.loads(listed.stdout)
    assert row["site"] == "https://liaobots.work" and row["cookies"] == 2
    assert row["names"] == ["cf_clearance", "session"] and row["user_agent"] == UA
    assert row["source"] == "har" and row["rejected"] is None

    table = run("cookies", "list")
    assert table.exit_code == 0
    [header, line] = table.stdout.strip().splitlines()
    assert header.split() == ["site", "cookies", "user-agent", "source", "imported", "rejected"]
    assert line.split()[:4] == ["https://liaobots.work", "2", "yes", "har"] and line.rstrip().endswith("-")

    assert run("cookies", "remove", "liaobots.work").exit_code == 0
    assert not path.exists()
    again = run("cookies", "remove", "liaobots.work")
    assert again.exit_code == 1 and "no cookies are stored for https://liaobots.work" in again.stderr
    assert "No cookies stored" in run("cookies", "list").stderr
    run.assert_never_shown([session, clearance])


def test_a_rejected_site_shows_why_and_a_new_import_clears_it(tmp_path: Path, run: Runner) -> None:
    txt = tmp_path / "cookies.txt"
    first, second = value("first"), value("second")
    txt.write_text(f"#HttpOnly_.liaobots.work\tTRUE\t/\tTRUE\t0\tcf_clearance\t{first}\n", encoding="utf-8")
    imported = run("cookies", "import", str(txt))
    assert imported.exit_code == 0
    assert "Imported 1 cookie for https://liaobots.work (without a user-agent)" in imported.stderr
    assert "--user-agent" in imported.stderr  # cf_clearance is useless without the browser's user-agent

    CookieStore().reject("https://liaobots.work", "HTTP 403 Cloudflare challenge")
    [row] = json.loads(run("cookies", "list", "--json").stdout)
    assert row["rejected"] == "HTTP 403 Cloudflare challenge"
    assert "HTTP 403 Cloudflare challenge" in run("cookies", "list").stdout

    txt.write_text(f".liaobots.work\tTRUE\t/\tTRUE\t0\tcf_clearance\t{second}\n", encoding="utf-8")
    imported = run("cookies", "import", str(txt), "--user-agent", CHROME_UA)
    assert imported.exit_code == 0 and "--user-agent" not in imported.stderr
    entry = CookieStore().get("https://liaobots.work")
    assert entry is not None and entry.cookies == {"cf_clearance": second} and entry.user_agent == CHROME_UA
    run.assert_never_shown([first, second])


def test_import_from_firefox_and_chrome_databases(tmp_path: Path, run: Runner,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)  # no desktop keyring: the v10 'peanuts' key
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    later = int(time.time()) + 3600
    rows, wanted = browser_rows(later)
    firefox = firefox_db(tmp_path / "cookies.sqlite", rows)
    imported = run("cookies", "import", "--from-browser", "firefox", "--site", "https://liaobots.work",
                   "--cookie-file", str(firefox), "--user-agent", UA)
    assert imported.exit_code == 0, imported.output
    assert "Imported 2 cookies for https://liaobots.work (with its user-agent)" in imported.stderr
    entry = CookieStore().get("liaobots.work")
    assert entry is not None and entry.cookies == wanted and entry.source == "firefox"

    chrome_rows, chrome_wanted = browser_rows(later)
    chrome = chrome_db(tmp_path / "Cookies", chrome_rows, version=24)
    imported = run("cookies", "import", "--from-browser", "Chrome", "--site", "liaobots.work",
                   "--cookie-file", str(chrome))
    assert imported.exit_code == 0, imported.output
    entry = CookieStore().get("liaobots.work")
    assert entry is not None and entry.cookies == chrome_wanted and entry.source == "chrome"
    assert entry.user_agent is None and "--user-agent" in imported.stderr

    nothing = run("cookies", "import", "--from-browser", "firefox", "--site", "nothing.example",
                  "--cookie-file", str(firefox))
    assert nothing.exit_code == 1 and "no unexpired cookies for nothing.example" in nothing.stderr
    run.assert_never_shown([*wanted.values(), *chrome_wanted.values(), *(row[2] for row in rows + chrome_rows)])


@pytest.mark.parametrize("args", [
    ("cookies", "import"),
    ("cookies", "import", "FILE", "--from-browser", "firefox", "--site", "liaobots.work"),
    ("cookies", "import", "--from-browser", "firefox"),
    ("cookies", "import", "--from-browser", "netscape", "--site", "liaobots.work"),
    ("cookies", "import", "FILE", "--cookie-file", "Cookies"),
    ("cookies", "import", "FILE", "--user-agent", " "),
    ("cookies", "remove"),
])
def test_command_line_mistakes_exit_2(run: Runner, args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == 2 and result.stderr.startswith(("Usage:", "Error:"))


def test_a_bad_file_is_one_error_line_without_its_values(tmp_path: Path, run: Runner) -> None:
    secret = value("secret")
    txt = tmp_path / "cookies.txt"
    txt.write_text(f"# Netscape HTTP Cookie File\nliaobots.work\tFALSE\t/\tTRUE\t0\tsession {secret}\n",
                   encoding="utf-8")
    result = run("cookies", "import", str(txt))
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: ") and str(txt) in line and "line 2" in line and secret not in line
    assert not (run.home / "cookies").exists()

    result = run("cookies", "import", str(tmp_path / "missing.har"))
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    result = run("cookies", "remove", "ftp://liaobots.work")
    assert result.exit_code == 1 and "not an http(s) site" in result.stderr
    run.assert_never_shown([secret])
