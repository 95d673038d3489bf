from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from patchbay.chat.request import ChatCompletionRequest
from patchbay.errors import ContextTooLong, InvalidRequest, ModelNotSupported
from patchbay.events import StreamEvent, TextDelta
from patchbay.providers import registry
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin
from patchbay.providers.catalog import ModelCatalog, ModelRecord, catalog, reset_catalog


def test_which_providers_serve_a_model_and_its_limits() -> None:
    records = catalog().providers_for("gpt-4o")
    assert [r.provider for r in records] == ["Liaobots"]
    assert records[0].max_chars == 260000 and records[0].context_window == 126000
    local = catalog().limits("smollm2")
    assert (local.provider, local.context_window, local.prefill) == ("Local", 8192, True)
    with pytest.raises(ModelNotSupported, match="no model 'gpt-17'"):
        catalog().limits("gpt-17")


def test_override_and_field_checks() -> None:
    c = ModelCatalog([ModelRecord("P", "m", context_window=100)])
    assert c.override("p", "m", tools=True) == ModelRecord("P", "m", context_window=100, tools=True)
    with pytest.raises(InvalidRequest, match="unknown field 'context'"):
        c.override("P", "m", context=5)
    with pytest.raises(InvalidRequest, match="context_window must be a positive integer"):
        c.override("P", "m", context_window=-3)


def test_user_file_adds_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nprovider = "Liaobots"\nmodel = "gpt-4o-2024-08-06"\ncontext_window = 1000\n'
                    '[[models]]\nprovider = "X"\nmodel = "new"\naliases = ["n"]\n', encoding="utf-8")
    c = ModelCatalog(r for p in registry for r in p.model_records())
    c.load_toml(path)
    assert c.limits("gpt-4o", "Liaobots").context_window == 1000
    assert c.limits("n").provider == "X"


def test_bad_user_file_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nprovider = "X"\nmodel = "m"\ntools = "yes"\n', encoding="utf-8")
    with pytest.raises(InvalidRequest, match=r"models\[0\].*tools must be true or false"):
        ModelCatalog().load_toml(path)


def test_default_catalog_reads_the_users_models_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models.toml").write_text('[[models]]\nprovider = "Y"\nmodel = "mine"\n', encoding="utf-8")
    monkeypatch.setenv("PATCHBAY_HOME", str(tmp_path))
    reset_catalog()
    try:
        assert catalog().limits("mine").provider == "Y"
    finally:
        reset_catalog()


class Echo(AsyncGeneratorProvider, ProviderModelMixin):
    """Answers with the number of messages it was given."""

    name = "EchoCount"
    default_model = "tiny"
    models: ClassVar[list[str]] = ["tiny"]

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        yield TextDelta(str(len(request.messages)))


@pytest.fixture
def tiny_context() -> Iterator[None]:
    catalog().add(ModelRecord("EchoCount", "tiny", context_window=60, max_output_tokens=20))
    yield
    reset_catalog()


async def test_history_is_fitted_to_the_catalogs_window(tiny_context: None) -> None:
    messages = [{"role": "system", "content": "s"}] + [{"role": "user", "content": "x" * 40}] * 5
    # window 60 - 20 reserved = 40 tokens; each turn is 10 + 4 tokens: system (5) + two turns fit.
    assert await Echo.create_async("", messages) == "3"


async def test_latest_turn_over_the_window_is_context_too_long(tiny_context: None) -> None:
    with pytest.raises(ContextTooLong, match="limit of 40 tokens"):
        await Echo.create_async("", [{"role": "user", "content": "x" * 400}])
