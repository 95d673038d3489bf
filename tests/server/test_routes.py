"""The route table (patchbay/server/routes.py) is the one declaration of the server's endpoints:
``PUBLIC_PATHS``, the OpenAPI paths, the Gateway's dispatch and README's endpoint table all agree
with it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from patchbay import __version__
from patchbay.server import app as app_module
from patchbay.server.app import Gateway, bind_routes
from patchbay.server.asgi import error_body
from patchbay.server.openapi import openapi_document
from patchbay.server.routes import PUBLIC_PATHS, ROUTES, Route, documented, public_paths
from patchbay.server.webpage import ASSETS
from patchbay.settings import RouterSettings, ServerSettings, Settings
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient
from tests.support.paths import README

KEY = "sk-routes-test-41c7"
AUTH = [(b"authorization", f"Bearer {KEY}".encode())]
ENDPOINT = re.compile(r"`([A-Z]+) (/[^`]*)`")


def test_public_paths_are_the_tables_public_routes() -> None:
    assert app_module.PUBLIC_PATHS is PUBLIC_PATHS
    assert {path for route in ROUTES if route.public and not route.web_ui for path in route.paths} == PUBLIC_PATHS
    assert {"/health", "/ready", "/openapi.json"} == PUBLIC_PATHS  # what the README's Security section promises
    assert public_paths(web_ui=True) - PUBLIC_PATHS == {"/", "/ui/{asset}"}


@pytest.mark.parametrize("auth", [True, False])
def test_the_openapi_paths_are_the_tables_documented_routes(auth: bool) -> None:
    document = openapi_document(__version__, auth=auth)
    served = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert served == {(route.path, method.lower()) for route, _ in documented() for method in route.methods}
    for route, operation in documented():
        for method in route.methods:
            described = document["paths"][route.path][method.lower()]
            assert described["operationId"] == operation.operation_id
            assert described["summary"] == operation.summary
            assert ("security" in described) == (auth and not route.public), route.path
            assert ("401" in described["responses"]) == (auth and not route.public), route.path
    undocumented = {route.path for route in ROUTES if route.operation is None}
    assert undocumented == {"/openapi.json", "/", "/ui/{asset}"}


def test_every_web_page_file_has_a_route() -> None:
    page_routes = [route for route in ROUTES if route.web_ui]
    for path in ASSETS:
        assert any(path == route.path or (route.pattern and path.startswith(route.path.split("{")[0]))
                   for route in page_routes), path


def test_a_route_naming_a_missing_handler_fails_at_start_up() -> None:
    with pytest.raises(LookupError, match="names handler 'chat_completions'"):
        bind_routes({}, web_ui=False)


def test_a_pattern_parameter_must_be_the_last_segment() -> None:
    with pytest.raises(ValueError, match="last segment"):
        Route("/v1/{thing}/items", ("GET",), "x")
    with pytest.raises(ValueError, match="HEAD comes with GET"):
        Route("/x", ("HEAD",), "x")


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_API_KEYS", KEY)
    monkeypatch.delenv("PATCHBAY_REDIS_URL", raising=False)


@pytest_asyncio.fixture
async def gateway(openai_fake: OpenAIFake, tmp_path: Path) -> AsyncIterator[ASGIClient]:
    """A gateway with API keys and the web page on, in front of the OpenAI fake."""
    settings = Settings(server=ServerSettings(web_ui=True, request_log_path=str(tmp_path / "logs.db")),
                        router=RouterSettings(retries=1),
                        providers={"fake": {"base_url": openai_fake.api_base, "models": ["m"]}},
                        routes={"small": ["fake/m"]})
    async with ASGIClient(Gateway(settings)) as client:
        yield client


async def sample_values(gateway: ASGIClient) -> dict[str, str]:
    """A value for each path parameter of the table that names something that exists."""
    body = json.dumps({"model": "small", "input": "Hi"}).encode()
    stored = await gateway.request("POST", "/v1/responses", body, headers=AUTH)
    assert stored.status == 200, stored.body
    return {"model": "small", "response_id": stored.json()["id"], "asset": "app.js"}


def concrete(path: str, samples: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: samples[match.group(1)], path)


async def test_every_route_is_answered_at_each_of_its_paths(gateway: ASGIClient) -> None:
    samples = await sample_values(gateway)
    for route in ROUTES:
        for path in route.paths:
            url = concrete(path, samples)
            answer = await gateway.request(route.methods[0], url, b"{}", headers=AUTH)
            assert answer.status != 404, (url, answer.body)  # POSTs of "{}" are 400; GETs are 200
            assert answer.status in ((200,) if route.methods == ("GET",) else (400,)), (url, answer.body)
            if "GET" in route.methods:
                head = await gateway.request("HEAD", url, headers=AUTH)
                assert head.status == 200 and head.body == b"", url


async def test_a_known_path_with_another_method_is_405_listing_the_tables_methods(gateway: ASGIClient) -> None:
    samples = await sample_values(gateway)
    for route in ROUTES:
        for path in route.paths:
            answer = await gateway.request("DELETE", concrete(path, samples), headers=AUTH)
            assert answer.status == 405, path
            assert answer.headers[b"allow"] == ", ".join(route.allowed).encode(), path
    for unknown in ("/v2/nothing", "/v1/chat", "/ui/missing.js", "/v1/responses/resp_1/input_items"):
        answer = await gateway.request("GET", unknown, headers=AUTH)
        assert answer.status == 404 and answer.json()["error"]["code"] == "not_found", unknown


async def test_public_routes_need_no_key_and_keyed_ones_do(gateway: ASGIClient) -> None:
    samples = {"model": "small", "response_id": "resp_unknown", "asset": "app.js"}
    for route in ROUTES:
        for path in route.paths:
            answer = await gateway.request(route.methods[0], concrete(path, samples), b"{}")
            if route.public:
                assert answer.status == 200, (path, answer.body)
            else:
                assert answer.status == 401, (path, answer.body)


def test_a_gateway_without_the_web_page_has_no_page_routes() -> None:
    exact, patterns = bind_routes({route.handler: (_unused, error_body) for route in ROUTES}, web_ui=False)
    assert "/" not in exact and all(not prefix.startswith("/ui/") for prefix, _ in patterns)
    exact, patterns = bind_routes({route.handler: (_unused, error_body) for route in ROUTES}, web_ui=True)
    assert "/" in exact and any(prefix == "/ui/" for prefix, _ in patterns)


async def _unused(*_: object) -> None:
    raise AssertionError("not called")


def readme_endpoints() -> tuple[set[tuple[str, str]], str]:
    """(method, path) of each endpoint README's table under "## Server" lists, and the table's text."""
    section = README.read_text(encoding="utf-8").split("## Server: `patchbay serve`", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Endpoint |"))
    table = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        table.append(line)
    listed: set[tuple[str, str]] = set()
    for row in table:
        first_cell = row.split("|")[1]
        for method, path in ENDPOINT.findall(first_cell):
            assert (method, path) not in listed, f"README lists {method} {path} twice"
            listed.add((method, path))
    return listed, "\n".join(table)


def test_readme_lists_exactly_the_tables_routes() -> None:
    listed, table = readme_endpoints()
    assert listed == {(method, route.path) for route in ROUTES for method in route.methods}
    for route in ROUTES:  # the paths without /v1 are named, not listed as endpoints of their own
        for alias in route.aliases:
            assert f"`{alias}`" in table, alias
