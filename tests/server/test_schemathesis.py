"""Schemathesis against a real ``patchbay serve``: every operation of ``/openapi.json`` gets
generated requests, valid and invalid, and every answer must be a documented status with a
documented body and content type, never a 5xx the document does not promise.

The gateway runs with client API keys on, so the document carries its security scheme and
schemathesis also checks that a request without the key is refused. Chat requests go to the
OpenAI fake, so the ones that pass validation are answered in milliseconds.

Generation is deterministic (``derandomize``, no example database), so CI sees the same cases on
every run; ``MAX_EXAMPLES`` bounds the work per operation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from patchbay import __version__
from patchbay.server.openapi import openapi_document
from tests.replicas.openai_fake import OpenAIFake
from tests.support.background_loop import BackgroundLoop
from tests.support.gateway_process import GatewayProcess

pytestmark = [pytest.mark.process]

T = TypeVar("T")

API_KEY = "sk-schemathesis-7d2e90"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODEL = "small"
MAX_EXAMPLES = 40
CALL_TIMEOUT = 20.0  # seconds for one generated request

CONFIG = schemathesis.Config.from_dict({
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
               "stateful": {"enabled": False}},
    # A body over the server's size limit (a setting, not part of the schema) is refused with 413
    # before it is parsed, valid or not. positive_data_acceptance is replaced by the narrower
    # gateway_accepts_what_it_documents below.
    "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 405, 413, 415, 422, 429]},
               "positive_data_acceptance": {"enabled": False}},
})


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a gateway with API keys on, in front of an OpenAI fake."""
    tmp_path: Path = tmp_path_factory.mktemp("schemathesis")
    runner = BackgroundLoop()  # the fake and the gateway's log reader, while schemathesis blocks this thread
    fake = OpenAIFake()
    try:
        runner.run(fake.start())
        config = {
            "router": {"retries": 1, "first_byte_timeout": 5.0, "idle_timeout": 5.0, "timeout": 10.0},
            "providers": {"fake": {"base_url": fake.api_base, "models": ["fake-small"]}},
            "routes": {MODEL: ["fake/fake-small"]},
            "server": {"max_body_bytes": 64 * 1024},
        }
        gateway = GatewayProcess(config, tmp_path, env={"PATCHBAY_API_KEYS": API_KEY})
        runner.run(gateway.__aenter__())
        try:
            yield gateway.base_url
        finally:
            runner.run(gateway.stop())
            assert "Traceback" not in gateway.log_text, gateway.log_text
    finally:
        runner.run(fake.stop())
        runner.close()


@pytest.fixture(scope="module")
def http(gateway_url: str) -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


#: The document of a gateway with API keys; loaded at import because ``schema.parametrize`` needs it
#: then (the lazy ``from_fixture`` loader does not work with pytest 9), and compared with the
#: served one below.
DOCUMENT = openapi_document(__version__, auth=True)
#: The Anthropic Messages and OpenAI Responses operations document only what their hand-written
#: decoders require and point to those APIs' own references for the rest, so generated bodies
#: would test the summary, not the decoder: their decoders have their own property tests
#: (tests/chat/test_anthropic_wire.py, tests/chat/test_responses_wire.py), their answers the real SDKs.
OTHER_APIS = "^/v1/(messages|responses)"
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path_regex=OTHER_APIS)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_every_answer_is_documented(case: schemathesis.Case, gateway_url: str, http: requests.Session) -> None:
    if _is_positive(case) and isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = MODEL  # a generated name is nearly always unknown (404): reach the answers too
    case.call_and_validate(base_url=gateway_url, session=http, headers=AUTH, timeout=CALL_TIMEOUT,
                           additional_checks=[gateway_accepts_what_it_documents])


def gateway_accepts_what_it_documents(ctx: schemathesis.CheckContext, response: schemathesis.Response,
                                      case: schemathesis.Case) -> None:
    """A request the document allows is answered, or refused only for a reason the document cannot
    know: the body size limit (413), an unknown model (404), or the upstream refusing what only it
    judges (free-form ``tools``, ``response_format``...: its 400, passed on)."""
    if not _is_positive(case) or response.status_code < 400 or response.status_code in (404, 413, 429):
        return
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "upstream answered 400" in message, (
        f"the gateway refused a request its document allows: {response.status_code} {message}")


def _is_positive(case: schemathesis.Case) -> bool:
    return case.meta is not None and case.meta.generation.mode == schemathesis.GenerationMode.POSITIVE


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_validates_against_the_document(stream: bool, gateway_url: str, http: requests.Session) -> None:
    """Generated cases reach a 200 only by chance; this one always does, streamed and whole."""
    operation = schema["/v1/chat/completions"]["POST"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "stream": stream,
            "stream_options": {"include_usage": True}}
    response = operation.Case(body=body).call_and_validate(base_url=gateway_url, session=http, headers=AUTH,
                                                          timeout=CALL_TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"][0].startswith("text/event-stream" if stream else "application/json")


def test_the_document_tested_is_the_one_served(gateway_url: str, http: requests.Session) -> None:
    served = http.get(f"{gateway_url}/openapi.json", timeout=CALL_TIMEOUT).json()
    assert served == json.loads(json.dumps(DOCUMENT))
