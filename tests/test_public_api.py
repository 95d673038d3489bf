"""The curated public surface stays complete and importable, and the seeds' call shapes keep
working: the names of ``patchbay``, ``patchbay.providers`` and ``patchbay.routing`` with the kind
each has (exception, class, function, module, value), and the signatures old code calls. No network:
only imports, ``inspect.signature`` and streams that are made but never started."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import types
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import patchbay
import patchbay.errors
import patchbay.events
import patchbay.providers
import patchbay.routing
from patchbay.events import TextStream
from patchbay.providers import AiChatOnline, Liaobots, Local, OpenAICompatible, liaobots_legacy
from patchbay.routing import Router


def test_every_name_in_all_exists() -> None:
    missing = [name for name in patchbay.__all__ if not hasattr(patchbay, name)]
    assert missing == []


def test_public_errors_and_events_are_reexported() -> None:
    for module in (patchbay.errors, patchbay.events):
        public = [n for n in module.__all__ if n[0].isupper() and n not in ("ERROR_TABLE", "ErrorInfo")]
        absent = [n for n in public if n not in patchbay.__all__ and n not in ("Timeout",)]
        assert absent == [], f"{module.__name__}: {absent}"


@pytest.mark.parametrize("name", [m.name for m in pkgutil.walk_packages(patchbay.__path__, "patchbay.")])
def test_every_module_imports_and_declares_all(name: str) -> None:
    module = importlib.import_module(name)
    if name.endswith("__main__"):
        return
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    assert all(hasattr(module, n) for n in module.__all__)


def _is_error(value: object) -> bool:
    """One of patchbay's errors (patchbay.errors' tree, under PatchbayError)."""
    return inspect.isclass(value) and issubclass(value, patchbay.PatchbayError)


def _is_provider(value: object) -> bool:
    return inspect.isclass(value) and issubclass(value, patchbay.providers.AsyncGeneratorProvider)


def _is_class(value: object) -> bool:
    return inspect.isclass(value) and not issubclass(value, BaseException)


#: The promised names of each public module, by kind. A name may be added to a module's __all__
#: without being listed here; a name listed here that goes missing or changes kind breaks old code.
KINDS: dict[str, dict[str, Callable[[object], bool]]] = {
    "patchbay": {
        **dict.fromkeys(
            ["AllProvidersFailed", "AuthError", "BudgetExceeded", "ChallengeRequired", "ClientRateLimited",
             "ConnectTimeout", "ConnectionFailed", "ContextTooLong", "DeadlineExceeded", "EndpointNotFound",
             "FirstByteTimeout", "IdleTimeout", "InvalidRequest", "MethodNotAllowed", "ModelNotSupported",
             "PatchbayError", "PayloadTooLarge", "PaymentRequired", "PermissionDenied", "ProtocolError",
             "ProviderNotWorking", "RateLimited", "RequestTimeout", "ResourceNotFound", "SessionRejected",
             "StreamInterrupted", "UnsupportedFeature", "UpstreamError"], _is_error),
        # A programming error (a stream read twice), not an answer's failure: not under PatchbayError.
        "StreamConsumed": lambda value: inspect.isclass(value) and issubclass(value, RuntimeError),
        **dict.fromkeys(
            ["AsyncChunkStream", "AsyncClient", "Attempt", "Charge", "ChatCompletion", "ChatCompletionChunk",
             "ChunkStream", "Client", "EventStream", "Fallback", "Finish", "Ledger", "Logprobs", "Mark", "Model",
             "ModelList", "ProviderInfo", "TextDelta", "TextStream", "Timeout", "ToolCallDelta", "Transcript",
             "Usage"], _is_class),
        "StreamEvent": lambda value: isinstance(value, types.UnionType) and all(map(_is_class, value.__args__)),
        "UNSET": lambda value: value is patchbay.timeouts.UNSET and not callable(value),
        "__version__": lambda value: isinstance(value, str) and value.count(".") >= 1,
    },
    "patchbay.providers": {
        **dict.fromkeys(["AiChatOnline", "Liaobots", "LiaobotsLegacy", "Local", "OpenAICompatible"], _is_provider),
        **dict.fromkeys(["AsyncGeneratorProvider", "ProviderModelMixin", "ProviderRegistry"], _is_class),
        "liaobots_legacy": inspect.ismodule,
        "registry": lambda value: isinstance(value, patchbay.providers.ProviderRegistry),
    },
    "patchbay.routing": {
        **dict.fromkeys(["Action", "CooldownPolicy", "Health", "MemoryStateStore", "RedisStateStore", "RetryPolicy",
                         "RouteTable", "Router", "StateStore", "Target"], _is_class),
        **dict.fromkeys(["RetryProvider", "decide", "get_strategy"], inspect.isfunction),
        "DECISIONS": lambda value: isinstance(value, Mapping) and len(value) > 0,
        "STRATEGIES": lambda value: isinstance(value, Mapping) and "priority" in value,
        "WILDCARD": lambda value: value == "*",
        "MidStream": lambda value: set(getattr(value, "__args__", ())) == {"continue", "error"},
    },
}


@pytest.mark.parametrize(("module_name", "name"), [(m, n) for m, names in KINDS.items() for n in names])
def test_public_name_is_exported_with_its_kind(module_name: str, name: str) -> None:
    module = importlib.import_module(module_name)
    assert name in module.__all__, f"{module_name}.__all__ lost {name!r}"
    value = getattr(module, name)
    assert KINDS[module_name][name](value), f"{module_name}.{name} is {value!r}, not the kind it was"


@pytest.mark.parametrize("module_name", list(KINDS))
def test_every_name_in_a_public_all_is_a_class_function_module_or_value(module_name: str) -> None:
    """No name in a public __all__ is a leftover submodule import or a private helper."""
    module = importlib.import_module(module_name)
    assert len(module.__all__) == len(set(module.__all__)), f"{module_name}.__all__ repeats a name"
    for name in module.__all__:
        value = getattr(module, name)
        assert not name.startswith("_") or name == "__version__", f"{module_name}.{name} is private"
        if inspect.ismodule(value):
            assert name == "liaobots_legacy", f"{module_name}.{name} is a module"


def _parameters(function: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


@pytest.mark.parametrize("provider", [Liaobots, AiChatOnline, Local, OpenAICompatible])
def test_create_async_generator_keeps_its_seed_shape(provider: type) -> None:
    """``await Provider.create_async_generator(model, messages, proxy=..., base_url=...)`` and
    ``async for`` on it, as the services' old documentation wrote it."""
    assert isinstance(inspect.getattr_static(provider, "create_async_generator"), classmethod)
    parameters = _parameters(provider.create_async_generator)
    positional = [p.name for p in parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional[:2] == ["model", "messages"]
    assert {"proxy", "base_url", "timeout"} <= set(parameters)
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())  # auth=, max_tokens=...


def test_create_async_generator_returns_an_awaitable_async_iterable_without_starting() -> None:
    stream = Liaobots.create_async_generator("gpt-4o", [{"role": "user", "content": "Hi"}],
                                             base_url="http://127.0.0.1:9")
    assert isinstance(stream, TextStream)
    assert inspect.isawaitable(stream) and hasattr(stream, "__aiter__") and hasattr(stream, "__anext__")
    asyncio.run(stream.aclose())  # made, never iterated: nothing was sent


def test_liaobots_legacy_module_keeps_its_seed_surface() -> None:
    assert isinstance(liaobots_legacy, types.ModuleType)
    parameters = _parameters(liaobots_legacy._create_completion)
    assert list(parameters)[:3] == ["model", "messages", "stream"]
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())  # auth=, base_url=
    inspect.signature(liaobots_legacy._create_completion).bind(
        model="gpt-3.5-turbo", messages=[], stream=True, auth="code", base_url="http://127.0.0.1:9")
    assert liaobots_legacy.url == "https://liaobots.com"
    assert liaobots_legacy.model == ["gpt-3.5-turbo", "gpt-4"]
    assert set(liaobots_legacy.models) == set(liaobots_legacy.model)
    assert all({"id", "name", "maxLength", "tokenLimit"} <= set(record) for record in liaobots_legacy.models.values())
    assert liaobots_legacy.params == "patchbay.providers.Liaobots supports: (model: str, messages: list, stream: bool)"
    assert liaobots_legacy.supports_stream is True and liaobots_legacy.needs_auth is True


def test_liaobots_legacy_without_auth_fails_before_any_request() -> None:
    """docs/protocols.md: without ``auth`` the call fails with AuthError before a request is made
    (the base URL is a closed port: a request would be a connection error instead)."""
    with pytest.raises(patchbay.AuthError, match="auth"):
        for _ in liaobots_legacy._create_completion(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}],
                                                    stream=True, base_url="http://127.0.0.1:9"):
            pass


def test_client_keeps_the_openai_call_shapes() -> None:
    client = patchbay.Client()
    for path in ("chat.completions.create", "models.list", "messages.create", "responses.create",
                 "responses.retrieve", "embeddings.create"):
        target: Any = client
        for part in path.split("."):
            target = getattr(target, part)
        assert callable(target), f"Client().{path}"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(client.chat.completions.create).values())
    assert {"provider", "routes", "config", "timeout", "proxy"} <= set(_parameters(patchbay.Client))
    assert inspect.iscoroutinefunction(patchbay.AsyncClient().chat.completions.create)


def test_configure_keeps_the_documented_shapes() -> None:
    """README: ``OpenAICompatible.configure(name, base_url=..., api_key_env=..., models=...)``,
    ``OpenAICompatible.from_preset("groq", prefill=True)``, ``Router.configure(routes, strategy=...,
    retry=..., cooldown=..., mid_stream=..., state=...)``; each makes a provider class."""
    configure = _parameters(OpenAICompatible.configure)
    assert next(iter(configure)) == "name"
    assert {"base_url", "api_key", "api_key_env", "api_keys", "models", "default_model", "headers", "extra_body",
            "prefill", "capabilities"} <= set(configure)
    assert isinstance(inspect.getattr_static(OpenAICompatible, "configure"), classmethod)
    made = OpenAICompatible.configure("shape-check", base_url="http://127.0.0.1:9/v1", models=["m"])
    assert inspect.isclass(made) and issubclass(made, OpenAICompatible)
    assert next(iter(_parameters(OpenAICompatible.from_preset))) == "preset_name"
    route_options = _parameters(Router.configure)
    assert next(iter(route_options)) == "routes"
    assert {"strategy", "retry", "cooldown", "mid_stream", "state"} <= set(route_options)
