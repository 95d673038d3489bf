"""The web chat page at ``/``, in real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package) against a real ``patchbay serve`` in front of the OpenAI fake.

Chromium is kept off the network by its launch flags; the page itself loads nothing but its own
files from the server. A screenshot of the page mid-answer is taken to a temporary file, or to
``$PATCHBAY_SCREENSHOT`` when set: ``PATCHBAY_SCREENSHOT=docs/web-page.png python -m pytest
tests/server/test_web_page.py -k streamed_answer`` refreshes the one the README shows.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.replicas.openai_fake import OpenAIFake
from tests.support.gateway_process import GatewayProcess
from tests.support.paths import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.process]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Flags that keep Chromium off the network and quiet in a container (run as root, no GPU).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
API_KEY = "sk-page-test-7c21e0"
WAIT = 15_000  # ms: the longest any single expectation waits (the machine is small and shared)

expect.set_options(timeout=WAIT)


def config_for(fake: OpenAIFake, *, web_ui: bool = True, extra_target: bool = False) -> dict[str, Any]:
    providers: dict[str, Any] = {"fake": {"base_url": fake.api_base, "models": ["fake-small", "fake-large"]}}
    small = ["fake/fake-small"]
    if extra_target:  # a second target that refuses connections: two reasons on an "all failed" page
        providers["offline"] = {"base_url": "http://127.0.0.1:9/v1", "models": ["fake-small"]}
        small.append("offline/fake-small")
    return {
        "server": {"web_ui": web_ui},
        "router": {"retries": 1, "connect_timeout": 2.0, "first_byte_timeout": 5.0, "idle_timeout": 30.0,
                   "timeout": 60.0},
        "providers": providers,
        "routes": {"small": small, "large": ["fake/fake-large"]},
    }


@pytest_asyncio.fixture
async def gateway(openai_fake: OpenAIFake, tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with GatewayProcess(config_for(openai_fake), tmp_path) as process:
        yield process


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (Debian package 'chromium'; .ci/run installs it)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Uncaught script errors and console errors of the test's page."""
    return []


@pytest_asyncio.fixture
async def page(browser: Browser, page_errors: list[str]) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1100, "height": 720})
    page = await context.new_page()
    # Anything that runs from an answer would call window.__ran; any blocked attempt to run or load
    # something shows up as a CSP violation. Both must stay empty.
    await page.add_init_script("""
        window.__ran = [];
        window.__csp = [];
        document.addEventListener("securitypolicyviolation",
            (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
    """)
    page.on("pageerror", lambda error: page_errors.append(f"page error: {error}"))
    page.on("console", lambda msg: msg.type == "error" and page_errors.append(f"console: {msg.text}"))
    try:
        yield page
    finally:
        await context.close()


async def open_page(page: Page, gateway: GatewayProcess) -> None:
    await page.goto(f"{gateway.base_url}/")
    await expect(page.locator("#model option")).to_have_count(2)


async def ask(page: Page, prompt: str) -> None:
    await page.locator("#prompt").fill(prompt)
    await page.locator("#prompt").press("Enter")


def last_answer(page: Page) -> Any:
    return page.locator(".message.assistant").last


async def wait_answered(page: Page) -> None:
    await expect(page.locator(".message.pending")).to_have_count(0)
    await expect(page.locator("#send")).to_be_visible()


# -- loading, streaming, provider --------------------------------------------------------------


async def test_the_page_loads_its_own_files_and_lists_the_models(page: Page, gateway: GatewayProcess,
                                                                 page_errors: list[str]) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    response = await page.goto(f"{gateway.base_url}/")
    assert response is not None and response.status == 200
    policy = await response.header_value("content-security-policy")
    assert policy is not None and "script-src 'self'" in policy and "default-src 'none'" in policy
    await expect(page.locator("#model option")).to_have_count(2)
    assert await page.locator("#model option").all_text_contents() == ["small", "large"]
    assert requested and all(url.startswith(gateway.base_url) for url in requested), requested
    assert page_errors == []


async def test_a_prompt_gets_a_streamed_answer_and_shows_who_answered(
        page: Page, gateway: GatewayProcess, openai_fake: OpenAIFake, page_errors: list[str], tmp_path: Path) -> None:
    openai_fake.answer = "Two routes: **small** and **large**, both served by the fake upstream."
    long_answer = ("Add it under `[providers]` and name it in a **route**:\n\n"
                          "1. Give the *base URL* and the key's variable\n2. List it in `[routes]`\n"
                          "3. Check it with `patchbay providers check`\n\n"
                          "```toml\n[providers.groq]\npreset = \"groq\"\napi_key_env = \"GROQ_API_KEY\"\n\n"
                          "[routes]\nfast = [\"groq/llama-3.1-8b-instant\", \"Local/smollm2-135m-instruct\"]\n```\n\n"
                          "The next request to `fast` tries Groq first, then the embedded model.")
    await page.set_viewport_size({"width": 1000, "height": 680})
    await open_page(page, gateway)
    await ask(page, "Which models can I use here?")
    await wait_answered(page)
    openai_fake.answer = long_answer
    openai_fake.delay_per_chunk = 1.5  # slow enough to see the answer arrive piece by piece
    await ask(page, "How do I add a provider?")
    body = last_answer(page).locator(".body")
    await expect(body.locator("pre code")).to_contain_text("[providers.groq]")  # part of the answer is shown ...
    assert await page.locator(".message.pending").count() == 1  # ... while the rest is still coming
    assert "embedded model" not in await body.inner_text()
    screenshot = Path(os.environ.get("PATCHBAY_SCREENSHOT") or tmp_path / "web-page.png")
    await page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 0
    await wait_answered(page)
    assert (await body.inner_text()).endswith("then the embedded model.")
    meta = last_answer(page).locator(".meta")
    await expect(meta).to_contain_text("answered by fake")
    await expect(meta).to_contain_text("fake-small")
    await expect(meta).to_contain_text("first token after")
    assert openai_fake.last_body["stream"] is True
    # Multi-turn: the second request carried the whole conversation.
    assert [m["role"] for m in openai_fake.last_body["messages"]] == ["user", "assistant", "user"]
    assert page_errors == []


async def test_enter_sends_and_shift_enter_adds_a_line(page: Page, gateway: GatewayProcess,
                                                      openai_fake: OpenAIFake) -> None:
    await open_page(page, gateway)
    prompt = page.locator("#prompt")
    await prompt.click()
    await page.keyboard.type("echo:first line")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("second line")
    assert await prompt.input_value() == "echo:first line\nsecond line"
    assert openai_fake.chat_count == 0
    await page.keyboard.press("Enter")
    await wait_answered(page)
    assert openai_fake.last_body["messages"][-1]["content"] == "echo:first line\nsecond line"
    assert await page.locator(".message.user .body").inner_text() == "echo:first line\nsecond line"
    assert await prompt.input_value() == ""


async def test_stop_aborts_the_answer_and_the_server_cancels_the_upstream(
        page: Page, gateway: GatewayProcess, openai_fake: OpenAIFake, page_errors: list[str]) -> None:
    openai_fake.delay_per_chunk = 5.0  # the whole answer would take half a minute
    await open_page(page, gateway)
    await ask(page, "Tell me a long story")
    body = last_answer(page).locator(".body")
    await expect(body).not_to_be_empty()
    await page.locator("#stop").click()
    await openai_fake.wait_until(lambda: openai_fake.disconnects == 1, timeout=WAIT / 1000)
    await wait_answered(page)
    await expect(last_answer(page).locator(".meta")).to_contain_text("stopped")
    assert openai_fake.answer.startswith(await body.inner_text())  # the partial answer is kept
    assert await last_answer(page).locator(".failure").is_hidden()
    assert page_errors == []


# -- conversations ---------------------------------------------------------------------------------


async def test_conversations_survive_a_reload_and_can_be_renamed_and_deleted(
        page: Page, gateway: GatewayProcess) -> None:
    await open_page(page, gateway)
    await ask(page, "echo:first answer")
    await wait_answered(page)
    await page.locator("#new-chat").click()
    await ask(page, "echo:second answer")
    await wait_answered(page)
    conversations = page.locator("#conversations .conversation")
    await expect(conversations).to_have_count(2)

    await page.reload()
    await expect(conversations).to_have_count(2)
    await expect(page.locator(".message.assistant .body")).to_have_text(["second answer"])
    await conversations.filter(has_text="echo:first answer").locator(".open").click()
    await expect(page.locator(".message.assistant .body")).to_have_text(["first answer"])

    await conversations.filter(has_text="echo:first answer").locator(".rename").click()
    await page.locator("#conversations input").fill("Renamed chat")
    await page.locator("#conversations input").press("Enter")
    await expect(conversations.filter(has_text="Renamed chat")).to_have_count(1)
    second = conversations.filter(has_text="echo:second answer")
    await expect(second.locator(".delete")).to_be_hidden()  # only for the open chat, or under the pointer
    await second.hover()
    await second.locator(".delete").click()
    await expect(conversations).to_have_count(1)

    await page.reload()
    await expect(conversations.locator(".open")).to_have_text(["Renamed chat"])
    await conversations.locator(".open").click()
    await expect(page.locator(".message.assistant .body")).to_have_text(["first answer"])


# -- rendering untrusted output --------------------------------------------------------------------

MALICIOUS = "\n".join([
    "Hello <script>window.__ran.push('script')</script>",
    "<img src=x onerror=\"window.__ran.push('img')\">",
    "<svg onload=\"window.__ran.push('svg')\"></svg>",
    "<iframe srcdoc=\"<script>parent.__ran.push('iframe')</script>\"></iframe>",
    '<a href="javascript:window.__ran.push(\'raw-link\')">raw link</a>',
    "[click me](javascript:window.__ran.push('md-link'))",
    "[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![pixel](http://127.0.0.1:9/track.png)",
    "<style>body { display: none }</style>",
    "**still bold** and a [safe link](https://example.com/docs)",
])


async def test_a_malicious_answer_renders_inert(page: Page, gateway: GatewayProcess, page_errors: list[str]) -> None:
    await open_page(page, gateway)
    await ask(page, "echo:" + MALICIOUS)
    await wait_answered(page)
    answer = last_answer(page).locator(".body")
    text = await answer.inner_text()
    assert "<script>window.__ran.push('script')</script>" in text  # shown as text, not run
    assert "<img src=x onerror=" in text
    await answer.get_by_text("click me").click()  # plain text now: clicking does nothing
    await answer.get_by_text("raw link").first.click()
    live = await page.evaluate("""() => {
        const root = document.querySelector("#messages");
        return {
            elements: [...root.querySelectorAll("script, img, svg, iframe, object, embed, style, link, form")]
                .map((e) => e.tagName),
            handlers: [...root.querySelectorAll("*")].flatMap((e) =>
                [...e.attributes].filter((a) => a.name.startsWith("on")).map((a) => a.name)),
            links: [...root.querySelectorAll("a")].map((a) => [a.textContent, a.getAttribute("href"), a.rel]),
            ran: window.__ran,
            csp: window.__csp,
            hidden: getComputedStyle(document.body).display === "none",
        };
    }""")
    assert live["ran"] == []
    assert live["csp"] == []  # nothing even tried to run or load
    assert live["elements"] == []
    assert live["handlers"] == []
    assert live["hidden"] is False
    # Only the web address is a live link (an image becomes a link too, never a fetch).
    assert [href for _, href, _ in live["links"]] == ["http://127.0.0.1:9/track.png", "https://example.com/docs"]
    assert all("noopener" in rel for _, _, rel in live["links"])
    await expect(answer.locator("strong")).to_have_text("still bold")
    assert page_errors == []


async def test_markdown_renders_with_a_working_copy_button(page: Page, gateway: GatewayProcess) -> None:
    markdown = ("# Title\n\nA paragraph with *emphasis*, `inline code` and ~~gone~~.\n\n"
                "- one\n- two\n  - nested\n\n> quoted\n\n```bash\necho 'hi' && ls -l\n```")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=gateway.base_url)
    await open_page(page, gateway)
    await ask(page, "echo:" + markdown)
    await wait_answered(page)
    answer = last_answer(page).locator(".body")
    await expect(answer.locator("h1")).to_have_text("Title")
    await expect(answer.locator("p em")).to_have_text("emphasis")
    await expect(answer.locator("p code")).to_have_text("inline code")
    await expect(answer.locator("del")).to_have_text("gone")
    await expect(answer.locator(":scope > ul > li")).to_have_count(2)
    await expect(answer.locator("ul ul > li")).to_have_text(["nested"])
    await expect(answer.locator("blockquote")).to_have_text("quoted")
    await expect(answer.locator("pre code")).to_have_text("echo 'hi' && ls -l")
    await expect(answer.locator(".code-language")).to_have_text("bash")
    await answer.locator(".copy").click()
    await expect(answer.locator(".copy")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == "echo 'hi' && ls -l"


# -- errors -------------------------------------------------------------------------------------------


async def test_all_providers_failed_is_explained_with_each_reason(
        page: Page, openai_fake: OpenAIFake, tmp_path: Path, page_errors: list[str]) -> None:
    openai_fake.scenario = "status_503"
    async with GatewayProcess(config_for(openai_fake, extra_target=True), tmp_path) as gateway:
        await open_page(page, gateway)
        await ask(page, "Hello")
        await wait_answered(page)
    failure = last_answer(page).locator(".failure")
    await expect(failure).to_be_visible()
    await expect(failure.locator(".failure-title")).to_have_text("All providers failed.")
    reasons = await failure.locator(".attempts li").all_inner_texts()
    assert len(reasons) == 2
    assert reasons[0].startswith("fake (fake-small):") and "503" in reasons[0]
    assert reasons[1].startswith("offline (fake-small):")
    assert all("status of 502" in e for e in page_errors)  # the browser logs the failed request, nothing else


async def test_the_page_asks_for_the_key_and_keeps_it_for_the_session_only(
        page: Page, openai_fake: OpenAIFake, tmp_path: Path, page_errors: list[str]) -> None:
    env = {"PATCHBAY_API_KEYS": API_KEY}
    async with GatewayProcess(config_for(openai_fake), tmp_path, env=env) as gateway:
        await page.goto(f"{gateway.base_url}/")
        dialog = page.locator("#key-dialog")
        await expect(dialog).to_be_visible()
        await page.locator("#key-input").fill("sk-wrong")
        await page.locator("#key-input").press("Enter")
        await expect(page.locator("#key-error")).to_have_text("The server did not accept that key.")
        await page.locator("#key-input").fill(API_KEY)
        await page.locator("#key-input").press("Enter")
        await expect(dialog).to_be_hidden()
        await expect(page.locator("#model option")).to_have_count(2)
        await ask(page, "echo:with a key")
        await wait_answered(page)
        await expect(last_answer(page).locator(".body")).to_have_text("with a key")
        stored = await page.evaluate("[sessionStorage.getItem('patchbay.apiKey'), JSON.stringify(localStorage)]")
        assert stored[0] == API_KEY and API_KEY not in stored[1]  # session storage only

        await page.reload()  # the same tab keeps its session: no question
        await expect(page.locator("#model option")).to_have_count(2)
        await expect(dialog).to_be_hidden()

        fresh = await page.context.browser.new_context()  # type: ignore[union-attr]
        try:
            other = await fresh.new_page()
            await other.goto(f"{gateway.base_url}/")
            await expect(other.locator("#key-dialog")).to_be_visible()
        finally:
            await fresh.close()
    assert API_KEY not in gateway.log_text
    assert all("401" in e for e in page_errors)  # the browser logs the refused requests, nothing else


# -- layout -----------------------------------------------------------------------------------------


async def test_the_page_fits_a_phone_screen(page: Page, gateway: GatewayProcess) -> None:
    await page.set_viewport_size({"width": 375, "height": 700})
    await open_page(page, gateway)
    await ask(page, "echo:A long line without spaces: " + "x" * 300)
    await wait_answered(page)
    fits = await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert fits
    sidebar = page.locator("#sidebar")
    assert not await sidebar.evaluate("(e) => e.getBoundingClientRect().right > 0")  # slid away
    await page.locator("#toggle-sidebar").click()
    await expect(page.locator("#sidebar.open")).to_have_count(1)
    await expect(page.locator("#conversations .conversation")).to_have_count(1)
    await page.locator("#conversations .open").click()  # choosing a chat closes the list again
    await expect(page.locator("#sidebar.open")).to_have_count(0)
    for selector in ("#prompt", "#send", "#model"):
        box = await page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, selector


# -- the switch -------------------------------------------------------------------------------------


async def test_the_page_can_be_switched_off(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    async with GatewayProcess(config_for(openai_fake, web_ui=False), tmp_path) as gateway, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{gateway.base_url}/") as response:
            assert response.status == 404
        async with http.get(f"{gateway.base_url}/ui/app.js") as response:
            assert response.status == 404
        async with http.get(f"{gateway.base_url}/v1/models") as response:
            assert response.status == 200


async def test_the_page_files_are_public_but_the_api_is_not(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    env = {"PATCHBAY_API_KEYS": API_KEY}
    async with GatewayProcess(config_for(openai_fake), tmp_path, env=env) as gateway, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for path, kind in (("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
            async with http.get(gateway.base_url + path) as response:
                assert response.status == 200 and response.content_type == kind, path
                assert response.headers["x-content-type-options"] == "nosniff"
        async with http.get(f"{gateway.base_url}/v1/models") as response:
            assert response.status == 401


def test_no_asset_is_fetched_from_elsewhere() -> None:
    """Every URL in the page's files is relative to the server (no CDN, no fonts, no analytics)."""
    static = ROOT / "patchbay" / "server" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        for marker in ("<script src=\"http", "href=\"http", "@import", "url(http", "fetch(\"http"):
            assert marker not in text, f"{path.name} loads {marker!r}"



# -- the Markdown renderer on its own -----------------------------------------------------------------

ALLOWED_TAGS = {"P", "BR", "STRONG", "EM", "DEL", "CODE", "PRE", "A", "UL", "OL", "LI", "BLOCKQUOTE", "HR",
                "H1", "H2", "H3", "H4", "H5", "H6", "DIV", "SPAN", "BUTTON"}
ALLOWED_ATTRIBUTES = {"class", "href", "rel", "target", "start", "type"}
FRAGMENTS = ["<script>window.__ran.push(1)</script>", "<img src=x onerror=window.__ran.push(2)>",
             "[a](javascript:window.__ran.push(3))", "[b](JaVaScRiPt:alert(1))", "[c]( javascript:x)",
             "[d](data:text/html,x)", "[e](vbscript:x)", "[f](//evil.example/x)", "[g](https://ok.example/\"onmouseover=x)",
             "![h](https://ok.example/i.png)", "<https://ok.example>", "<javascript:x>", "http://ok.example/a_b",
             "**", "*", "_", "~~", "`", "```", "```js", "\n", "\n\n", "- ", "1. ", "> ", "# ", "    ", "---",
             "\\", "[", "](", ")", "<", ">", "&lt;", "&#60;script&#62;", "\"", "'", "x", "word", "é", "🌍"]


async def test_the_renderer_makes_only_inert_elements_from_any_mix_of_markdown_and_html(
        page: Page, gateway: GatewayProcess) -> None:
    rng = random.Random(7)
    samples = ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 30))) for _ in range(1500)]
    samples += FRAGMENTS
    await page.goto(f"{gateway.base_url}/")
    found = await page.evaluate("""async (samples) => {
        const { renderMarkdown } = await import("./ui/markdown.js");
        const tags = new Set(), attributes = new Set(), hrefs = new Set();
        for (const text of samples) {
            const box = document.createElement("div");
            box.append(renderMarkdown(text));
            for (const node of box.querySelectorAll("*")) {
                tags.add(node.tagName);
                for (const a of node.attributes) attributes.add(a.name);
                if (node.hasAttribute("href")) hrefs.add(node.getAttribute("href"));
            }
        }
        return { tags: [...tags], attributes: [...attributes], hrefs: [...hrefs], ran: window.__ran,
                 csp: window.__csp };
    }""", samples)
    assert set(found["tags"]) <= ALLOWED_TAGS, found["tags"]
    assert set(found["attributes"]) <= ALLOWED_ATTRIBUTES, found["attributes"]
    assert found["hrefs"] and all(re.match(r"(https?://|mailto:)", href) for href in found["hrefs"]), found["hrefs"]
    assert found["ran"] == [] and found["csp"] == []
