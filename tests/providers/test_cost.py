"""What a request costs: the catalog's and config's prices, usage.cost in every answer, and one
ledger that charges every attempt (whole, streamed, interrupted, fallback) on every endpoint.

The gateway runs in this process over real fake upstreams on 127.0.0.1 whose usage is fixed
(``usage_extra``), so each expected cost follows from the prices below.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from patchbay.chat.context import CHARS_PER_TOKEN, estimate_tokens
from patchbay.cli import cli
from patchbay.errors import InvalidRequest
from patchbay.events import Ledger, TextDelta, Transcript, Usage
from patchbay.providers import Liaobots
from patchbay.providers.catalog import FREE, ModelCatalog, Prices
from patchbay.providers.local.model import Local
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.providers.pricing import Meter
from patchbay.requestlog import Exchange, RequestLog
from patchbay.server.app import Gateway
from patchbay.settings import RouterSettings, ServerSettings, Settings, load_settings
from tests.replicas.openai_fake import OpenAIFake
from tests.support.asgi_client import ASGIClient

CHEAP = {"input": 2.0, "output": 8.0, "cached_input": 0.5}  # USD per million tokens
DEAR = {"input": 10.0, "output": 30.0}
FIXED = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
MESSAGES = [{"role": "user", "content": "How much does this cost?"}]


def cost_of(prices: dict[str, float], prompt: int, completion: int, cached: int = 0) -> float:
    cached_price = prices.get("cached_input", prices["input"])
    return ((prompt - cached) * prices["input"] + cached * cached_price + completion * prices["output"]) / 1e6


def gateway(tmp_path: Path, providers: dict[str, dict[str, Any]], route: list[str]) -> ASGIClient:
    settings = Settings(server=ServerSettings(web_ui=False, request_log=True,
                                              request_log_path=str(tmp_path / "logs.db")),
                        router=RouterSettings(retries=1), providers=providers, routes={"priced": route})
    return ASGIClient(Gateway(settings))


def chat_body(stream: bool, **extra: Any) -> bytes:
    body: dict[str, Any] = {"model": "priced", "messages": MESSAGES, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def sse_payloads(body: bytes) -> list[dict[str, Any]]:
    payloads = []
    for line in body.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            payloads.append(json.loads(line[6:]))
    return payloads


def logged(tmp_path: Path) -> list[Exchange]:
    with RequestLog(tmp_path / "logs.db") as log:
        return list(reversed(log.latest(0)))


@pytest.fixture(autouse=True)
def _no_shared_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHBAY_API_KEYS", raising=False)
    monkeypatch.delenv("PATCHBAY_REDIS_URL", raising=False)


# -- prices -------------------------------------------------------------------------------------------


def test_prices_count_cached_prompt_tokens_at_their_own_price() -> None:
    prices = Prices(2.0, 8.0, 0.5)
    assert prices.cost(1000, 500) == pytest.approx(cost_of(CHEAP, 1000, 500))
    assert prices.cost(1000, 500, cached_tokens=400) == pytest.approx(cost_of(CHEAP, 1000, 500, 400))
    assert Prices(2.0, 8.0).cost(1000, 0, cached_tokens=400) == pytest.approx(cost_of(DEAR | {"input": 2.0}, 1000, 0))
    assert FREE.cost(10**6, 10**6) == 0


@pytest.mark.parametrize(("table", "named"), [
    ({"input": 1.0}, "output"), ({"input": -1, "output": 1}, "input"), ({"input": 1, "output": "x"}, "output"),
    ({"input": 1, "output": 1, "per_call": 2}, "per_call"), ("cheap", "input, output and cached_input"),
])
def test_a_mistake_in_prices_is_named(table: Any, named: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Prices.of(table, "providers.fake.prices")
    assert named in caught.value.message and "providers.fake.prices" in caught.value.message


def test_config_prices_are_the_providers_and_mistakes_name_the_table(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[providers.fake]\nbase_url = "http://127.0.0.1:9/v1"\n'
                      '[providers.fake.prices]\ninput = 0.15\noutput = 0.60\ncached_input = 0.075\n')
    provider = load_settings(config, environ={}).provider_class("fake")
    assert provider.prices_for("any-model") == Prices(0.15, 0.60, 0.075)
    config.write_text('[providers.fake]\nbase_url = "http://127.0.0.1:9/v1"\n[providers.fake.prices]\ninput = 1\n')
    with pytest.raises(InvalidRequest) as caught:
        load_settings(config, environ={}).provider_class("fake")
    assert "providers.fake" in caught.value.message and "output" in caught.value.message


def test_catalog_records_presets_and_free_services_carry_prices(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nprovider = "Acme"\nmodel = "m"\nprices = { input = 3, output = 4 }\n')
    catalog = ModelCatalog()
    catalog.load_toml(models)
    record = catalog.get("Acme", "m")
    assert record is not None and record.prices == Prices(3.0, 4.0)
    openai = OpenAICompatible.from_preset("openai")
    prices = openai.prices_for("gpt-4o-mini")
    assert prices is not None and prices.output > prices.input > 0
    assert openai.prices_for("a-model-nobody-priced") is None
    assert OpenAICompatible.from_preset("ollama").prices_for("llama3") == FREE
    assert Liaobots.prices_for("gpt-4o") == FREE and Local.prices_for(Local.default_model) == FREE


# -- the meter ------------------------------------------------------------------------------------------


def test_a_second_usage_report_of_one_attempt_is_not_charged_twice() -> None:
    from patchbay.chat.request import request_from_kwargs

    ledger, transcript = Ledger(), Transcript()
    request = request_from_kwargs({"model": "m", "messages": MESSAGES})
    meter = Meter("P", "m", Prices(2.0, 8.0), request, transcript, ledger)
    first = meter.priced(Usage(1000, 500))
    again = meter.priced(Usage(1000, 500))
    meter.close()
    assert first.cost == again.cost == pytest.approx(cost_of(CHEAP, 1000, 500)) == ledger.cost
    assert len(ledger.charges) == 1


def test_an_attempt_closed_without_usage_is_charged_its_estimate() -> None:
    from patchbay.chat.request import request_from_kwargs

    ledger, transcript = Ledger(), Transcript()
    request = request_from_kwargs({"model": "m", "messages": MESSAGES})
    meter = Meter("P", "m", Prices(2.0, 8.0), request, transcript, ledger)
    transcript.record(TextDelta("x" * 41))
    meter.close()
    prompt = estimate_tokens(request.message_dicts())
    assert ledger.charges[0].estimated and ledger.charges[0].completion_tokens == math.ceil(41 / CHARS_PER_TOKEN)
    assert ledger.cost == pytest.approx(cost_of(CHEAP, prompt, math.ceil(41 / CHARS_PER_TOKEN)))


# -- through the gateway -------------------------------------------------------------------------------


async def test_whole_and_streamed_answers_cost_the_same_and_say_so(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.usage_extra = {**FIXED, "prompt_tokens_details": {"cached_tokens": 200}}
    expected = cost_of(CHEAP, 1000, 500, cached=200)
    client = gateway(tmp_path, {"fake": {"base_url": openai_fake.api_base, "models": ["m"], "prices": CHEAP}},
                     ["fake/m"])
    async with client:
        whole = await client.request("POST", "/v1/chat/completions", chat_body(False))
        streamed = await client.request("POST", "/v1/chat/completions", chat_body(True))
        metrics = (await client.request("GET", "/metrics")).body.decode()
    assert whole.status == streamed.status == 200
    assert whole.json()["usage"]["cost"] == pytest.approx(expected)
    assert whole.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 200}
    final = sse_payloads(streamed.body)[-1]
    assert final["choices"] == [] and final["usage"]["cost"] == pytest.approx(expected)
    assert [row.cost for row in logged(tmp_path)] == [pytest.approx(expected)] * 2
    total = next(line for line in metrics.splitlines() if line.startswith("patchbay_cost_usd_total{"))
    assert 'key="anonymous"' in total and 'provider="fake"' in total
    assert float(total.rsplit(" ", 1)[1]) == pytest.approx(2 * expected)


async def test_the_cost_an_upstream_states_wins(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.usage_extra = {**FIXED, "cost": 0.0123}
    client = gateway(tmp_path, {"fake": {"base_url": openai_fake.api_base, "models": ["m"], "prices": CHEAP}},
                     ["fake/m"])
    async with client:
        whole = await client.request("POST", "/v1/chat/completions", chat_body(False))
    assert whole.json()["usage"]["cost"] == pytest.approx(0.0123)
    assert logged(tmp_path)[0].cost == pytest.approx(0.0123)


async def test_an_interrupted_stream_is_charged_for_what_it_delivered(tmp_path: Path) -> None:
    async with OpenAIFake("mid_stream_error") as broken:
        client = gateway(tmp_path, {"broken": {"base_url": broken.api_base, "models": ["m"], "prices": CHEAP}},
                         ["broken/m"])
        async with client:
            streamed = await client.request("POST", "/v1/chat/completions", chat_body(True))
    assert streamed.status == 200  # the headers went out with the first text; the error is in-band
    row = logged(tmp_path)[0]
    assert row.response and row.error is not None
    prompt = estimate_tokens(MESSAGES)
    assert row.cost == pytest.approx(cost_of(CHEAP, prompt, math.ceil(len(row.response) / CHARS_PER_TOKEN)))
    assert row.cost > 0


async def test_every_attempt_of_a_fallback_is_charged_to_the_request(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.usage_extra = dict(FIXED)
    async with OpenAIFake("mid_stream_error") as broken, OpenAIFake("status_500") as refusing:
        providers = {
            "refusing": {"base_url": refusing.api_base, "models": ["m"], "prices": DEAR},
            "broken": {"base_url": broken.api_base, "models": ["m"], "prices": DEAR, "prefill": True},
            "fake": {"base_url": openai_fake.api_base, "models": ["m"], "prices": CHEAP, "prefill": True},
        }
        client = gateway(tmp_path, providers, ["refusing/m", "broken/m", "fake/m"])
        async with client:
            streamed = await client.request("POST", "/v1/chat/completions", chat_body(True))
    assert streamed.status == 200
    row = logged(tmp_path)[0]
    delivered = next(f["delivered"] for f in row.fallbacks if f["provider"] == "broken")
    assert delivered > 0
    interrupted = cost_of(DEAR, estimate_tokens(MESSAGES), math.ceil(delivered / CHARS_PER_TOKEN))
    expected = interrupted + cost_of(CHEAP, 1000, 500)  # the refusing target consumed nothing
    assert sse_payloads(streamed.body)[-1]["usage"]["cost"] == pytest.approx(expected)
    assert row.cost == pytest.approx(expected)


async def test_chat_messages_and_responses_share_one_ledger(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    openai_fake.usage_extra = dict(FIXED)
    expected = cost_of(CHEAP, 1000, 500)
    client = gateway(tmp_path, {"fake": {"base_url": openai_fake.api_base, "models": ["m"], "prices": CHEAP}},
                     ["fake/m"])
    async with client:
        chat = await client.request("POST", "/v1/chat/completions", chat_body(False))
        message = await client.request("POST", "/v1/messages", json.dumps(
            {"model": "priced", "max_tokens": 50, "messages": MESSAGES}).encode())
        response = await client.request("POST", "/v1/responses", json.dumps(
            {"model": "priced", "input": MESSAGES[0]["content"]}).encode())
        streamed_message = await client.request("POST", "/v1/messages", json.dumps(
            {"model": "priced", "max_tokens": 50, "messages": MESSAGES, "stream": True}).encode())
    assert chat.json()["usage"]["cost"] == pytest.approx(expected)
    assert message.json()["usage"]["cost"] == pytest.approx(expected)
    assert response.json()["usage"]["cost"] == pytest.approx(expected)
    delta = next(p for p in sse_payloads(streamed_message.body) if p["type"] == "message_delta")
    assert delta["usage"]["cost"] == pytest.approx(expected)
    assert [row.cost for row in logged(tmp_path)] == [pytest.approx(expected)] * 4

    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nrequest_log_path = "{tmp_path / "logs.db"}"\n')
    result = CliRunner().invoke(cli, ["logs", "--cost", "--since", "7d", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    [spend] = json.loads(result.output)
    assert (spend["key"], spend["provider"], spend["model"], spend["requests"]) == ("anonymous", "fake", "m", 4)
    assert spend["cost"] == pytest.approx(4 * expected)
    table = CliRunner().invoke(cli, ["logs", "--cost", "--config", str(config)])
    assert table.exit_code == 0 and "total" in table.output and "anonymous" in table.output
    nothing = CliRunner().invoke(cli, ["logs", "--cost", "--since", "0s", "--json", "--config", str(config)])
    assert json.loads(nothing.output) == []
    wrong = CliRunner().invoke(cli, ["logs", "--cost", "--since", "a week", "--config", str(config)])
    assert wrong.exit_code != 0 and "not a duration" in wrong.output


async def test_embeddings_cost_their_input_tokens(openai_fake: OpenAIFake, tmp_path: Path) -> None:
    client = gateway(tmp_path, {"fake": {"base_url": openai_fake.api_base, "models": ["m"], "prices": CHEAP,
                                         "capabilities": {"embeddings": "native"}}}, ["fake/m"])
    async with client:
        answer = await client.request("POST", "/v1/embeddings", json.dumps(
            {"model": "priced", "input": ["one", "two"]}).encode())
    assert answer.status == 200, answer.body
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] > 0 and usage["cost"] == pytest.approx(cost_of(CHEAP, usage["prompt_tokens"], 0))
    assert logged(tmp_path)[0].cost == pytest.approx(usage["cost"])
