"""Gateway settings: TOML file, environment variables, precedence and named mistakes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import InvalidRequest
from patchbay.events import StreamEvent, TextDelta
from patchbay.providers import Local
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin
from patchbay.providers.capabilities import Support
from patchbay.providers.openai_compatible import OpenAICompatible
from patchbay.routing import Router, RouteTable, Target
from patchbay.settings import LOCAL_MODEL, load_settings
from tests.support.paths import README

HELLO = [{"role": "user", "content": "hi"}]

EXAMPLE = """
[server]
port = 9000
api_keys_env = "GATEWAY_KEYS"
cors_origins = ["http://localhost:3000"]

[router]
strategy = "shuffle"
timeout = 30

[providers.groq]
preset = "groq"
api_key_env = "MY_GROQ_KEY"

[providers.box]
base_url = "http://127.0.0.1:8080/v1"
models = ["llama-3"]
prefill = true

[routes]
fast = ["groq/llama-3.1-8b-instant", "box/llama-3"]
local = ["Local"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "patchbay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_readme_style_example_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, EXAMPLE), environ={"GATEWAY_KEYS": "k1, k2"})
    assert settings.server.port == 9000
    assert settings.server.api_keys({"GATEWAY_KEYS": "k1, k2"}) == ["k1", "k2"]
    assert settings.server.cors_origins == ("http://localhost:3000",)
    assert settings.router.strategy == "shuffle" and settings.router.limits().total == 30
    providers = settings.provider_classes()
    assert issubclass(providers["box"], OpenAICompatible) and providers["box"].supports_prefill
    assert providers["groq"].base_url == "https://api.groq.com/openai/v1"
    assert providers["groq"].api_key_env == "MY_GROQ_KEY"
    router = settings.build_router()
    assert sorted(router.get_models()) == ["fast", "local"]
    assert [t.provider.name for t in router.routes.targets_for("fast")] == ["groq", "box"]


def test_environment_beats_the_file_and_flags_beat_both(tmp_path: Path) -> None:
    env = {"PATCHBAY_PORT": "9100", "PATCHBAY_ROUTER_STRATEGY": "weighted", "PATCHBAY_CORS_ORIGINS": "a,b",
           "PATCHBAY_INSECURE_NO_AUTH": "yes"}
    settings = load_settings(write(tmp_path, EXAMPLE), environ=env)
    assert settings.server.port == 9100
    assert settings.server.cors_origins == ("a", "b")
    assert settings.server.insecure_no_auth is True
    assert settings.router.strategy == "weighted"
    assert settings.with_server(port=9200, host=None).server.port == 9200


def test_config_found_through_the_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 7000\n")
    assert load_settings(environ={"PATCHBAY_CONFIG": str(path)}).server.port == 7000


def test_no_config_serves_the_embedded_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path))
    settings = load_settings(environ={})
    assert settings.source is None
    assert settings.build_router().get_models() == [LOCAL_MODEL]


@pytest.mark.parametrize(("text", "env", "named"), [
    ("[server]\nprot = 1\n", {}, "unknown options ['prot']"),
    ("[server]\nport = 'eighty'\n", {}, "server.port must be an integer"),
    ("[server]\nport = 70000\n", {}, "port must be between 0 and 65535"),
    ("[server]\nworkers = 0\n", {}, "workers must be at least 1"),
    ("", {"PATCHBAY_PORT": "x"}, "PATCHBAY_PORT must be an integer"),
    ("", {"PATCHBAY_INSECURE_NO_AUTH": "maybe"}, "PATCHBAY_INSECURE_NO_AUTH must be true or false"),
    ("[serverr]\n", {}, "unknown tables ['serverr']"),
    ("[router]\ntimeout = -1\n", {}, "router.timeout must be a positive number"),
    ("[providers.x]\nbase = 'http://h'\n", {}, "providers.x: unknown fields ['base']"),
    ("[routes]\nfast = []\n", {}, "routes.fast must be a non-empty list"),
    ("[server\n", {}, "is not valid TOML"),
])
def test_mistakes_are_named(tmp_path: Path, text: str, env: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert named in str(info.value)
    assert str(tmp_path) in str(info.value) or named.startswith("PATCHBAY_")


def test_route_mistakes_are_named_when_the_router_is_built(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[routes]\nfast = ['Nowhere/model']\n"), environ={})
    with pytest.raises(InvalidRequest, match="Nowhere"):
        settings.build_router()
    # A bare name stands for the provider's default model; a service with none cannot be bare.
    settings = load_settings(write(tmp_path, "[providers.groq]\npreset = 'groq'\n[routes]\nfast = ['groq']\n"),
                             environ={})
    with pytest.raises(InvalidRequest, match=r"route 'fast': groq has no default model") as info:
        settings.build_router()
    assert str(tmp_path) in str(info.value)
    settings = load_settings(write(tmp_path, "[router]\nstrategy = 'fastest'\n[routes]\nx = ['Local']\n"),
                             environ={})
    with pytest.raises(InvalidRequest, match="fastest"):
        settings.build_router()


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_written_settings_read_back_the_same(tmp_path: Path) -> None:
    from patchbay.settings import to_toml

    tables = {"server": {"port": 9001, "cors_origins": ["http://a \"b\""]},
              "providers": {"my box": {"base_url": "http://127.0.0.1:1/v1", "headers": {"X-Team": "ü"}}},
              "routes": {"*": ["my box/m", {"provider": "Local", "weight": 2.5}]}}
    settings = load_settings(write(tmp_path, to_toml(tables)), environ={})
    assert settings.server.port == 9001 and settings.server.cors_origins == ('http://a "b"',)
    assert settings.providers == tables["providers"]
    assert settings.routes == tables["routes"]


def test_a_mistake_in_one_provider_leaves_the_others_usable(tmp_path: Path) -> None:
    text = "[providers.good]\nbase_url = 'http://127.0.0.1:9/v1'\n[providers.bad]\nmodels = ['m']\n" \
           "[providers.odd]\npreset = 'nonesuch'\n"
    settings = load_settings(write(tmp_path, text), environ={})
    assert settings.provider_class("good").base_url == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequest, match=r"providers\.bad: give a base_url or a preset"):
        settings.provider_class("bad")
    with pytest.raises(InvalidRequest, match=r"providers\.odd: unknown preset 'nonesuch'"):
        settings.provider_class("odd")
    with pytest.raises(InvalidRequest, match=r"providers\.bad"):
        settings.provider_classes()  # the whole table needs every entry right


# -- bare provider names in routes -------------------------------------------------------------------


class Recorder(AsyncGeneratorProvider, ProviderModelMixin):
    """Answers "ok" and records the model it was asked for."""

    default_model = "its-default"
    models: ClassVar[list[str]] = ["its-default", "other"]
    asked: ClassVar[list[str]] = []

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        cls.asked.append(call.model)
        yield TextDelta("ok")


async def test_a_bare_provider_means_its_default_model_and_the_catch_all_passes_the_name_on() -> None:
    Recorder.asked = []
    table = RouteTable.from_config(
        {"named": [Target(Recorder)], "plain": [{"provider": "Recorder", "weight": 2}], "text": ["Recorder"],
         "*": [Target(Recorder)]},
        providers={"Recorder": Recorder})
    router = Router.configure(table)
    for model in ("named", "plain", "text", "other"):
        assert await router.create_async(model, HELLO) == "ok"
    assert Recorder.asked == ["its-default", "its-default", "its-default", "other"]
    assert [t.model for t in table.targets_for("named")] == ["its-default"]
    assert [t.model for t in table.targets_for("elsewhere")] == [None]  # the catch-all's: the caller's model


def readme_config() -> str:
    """The complete config example of README's Configuration section."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    return next(block for block in blocks if "[routes]" in block and "[server]" in block)


async def test_the_readme_example_routes_reach_the_embedded_model_with_its_own_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fast = ["groq/llama-3.1-8b-instant", "box/llama-3", "Local"]``: with groq lacking its key
    and box not running, a request for "fast" reaches Local asking for smollm2-135m-instruct."""
    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path))  # no stored keys
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    asked: list[str] = []

    async def generate(cls: type[Local], request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        asked.append(call.model)
        yield TextDelta("answer")

    monkeypatch.setattr(Local, "generate", classmethod(generate))  # the words are not the point here
    settings = load_settings(write(tmp_path, readme_config()), environ={})
    box = {**settings.providers["box"], "base_url": "http://127.0.0.1:9/v1"}  # a port nothing listens on
    router = replace(settings, providers={**settings.providers, "box": box}).build_router()

    async def no_wait(seconds: float) -> None:
        return None

    router.sleep = no_wait  # type: ignore[assignment]
    stream = router.stream("fast", HELLO)
    assert await stream.collect() == "answer"
    assert asked == [LOCAL_MODEL]
    assert [(f.provider, f.model) for f in stream.fallbacks] == [("groq", "llama-3.1-8b-instant"), ("box", "llama-3")]
    assert stream.provider_info is not None and stream.provider_info.model == LOCAL_MODEL


def test_a_providers_capabilities_can_be_overridden_per_feature(tmp_path: Path) -> None:
    config = """
[providers.box]
base_url = "http://127.0.0.1:9/v1"
[providers.box.capabilities]
image_input = "none"
prefill = "native"
"""
    box = load_settings(write(tmp_path, config), environ={}).provider_class("box")
    capabilities = box.capabilities()
    assert capabilities.support("image_input") is Support.NONE and capabilities.accepts("prefill")
    assert capabilities.support("tools") is Support.NATIVE  # the rest stays as an OpenAI-compatible API's


@pytest.mark.parametrize(("table", "named"), [
    ('[providers.box.capabilities]\nvision = "none"', "unknown feature 'vision'"),
    ('[providers.box.capabilities]\ntools = "sometimes"', "providers.box.capabilities.tools"),
])
def test_a_wrong_capability_override_names_itself(tmp_path: Path, table: str, named: str) -> None:
    config = f'[providers.box]\nbase_url = "http://127.0.0.1:9/v1"\n{table}\n'
    with pytest.raises(InvalidRequest) as info:
        load_settings(write(tmp_path, config), environ={}).provider_class("box")
    assert named in info.value.message
