"""The model catalog: limits and capabilities per (provider, model), in one place.

Each provider describes its models (:meth:`AsyncGeneratorProvider.model_records`); the provider
registry hands them down (:func:`add_record_source`: the catalog never imports the layer above
it), and the catalog lays the user's overrides on top (a ``models.toml`` in the
patchbay config directory, or :meth:`ModelCatalog.override`). It answers "which providers serve
model X" and "what are X's limits", which the router and context fitting use.

``models.toml``::

    [[models]]
    provider = "OpenAICompatible"
    model = "llama3"
    context_window = 8192
    max_output_tokens = 2048
    tools = true
    prices = { input = 0.15, output = 0.60, cached_input = 0.075 }   # USD per million tokens
"""

from __future__ import annotations

import dataclasses
import threading
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchbay.errors import InvalidRequest, ModelNotSupported
from patchbay.paths import config_dir

__all__ = ["FREE", "ModelCatalog", "ModelRecord", "Prices", "add_record_source", "catalog", "reset_catalog"]

MILLION = 1_000_000
PRICE_FIELDS = ("input", "output", "cached_input")


@dataclass(frozen=True, slots=True)
class Prices:
    """What a model's tokens cost, in US dollars per million: prompt (``input``), answer
    (``output``) and prompt tokens served from the upstream's cache (``cached_input``; the input
    price when not stated)."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """The dollars these token counts cost (cached tokens are part of ``prompt_tokens``)."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((prompt_tokens - cached) * self.input + cached * cached_price
                + completion_tokens * self.output) / MILLION

    @classmethod
    def of(cls, value: object, where: str) -> Prices:
        """Prices from a config table (``{input = 0.15, output = 0.60, cached_input = 0.075}``);
        InvalidRequest names a missing, unknown or negative field."""
        if isinstance(value, Prices):
            return value
        if not isinstance(value, dict):
            raise InvalidRequest(f"{where} must be a table of input, output and cached_input (USD per million tokens)")
        unknown = set(value) - set(PRICE_FIELDS)
        if unknown:
            raise InvalidRequest(f"{where}: unknown fields {sorted(unknown)}; valid: {', '.join(PRICE_FIELDS)}")
        for name in PRICE_FIELDS:
            number = value.get(name)
            if name == "cached_input" and number is None:
                continue
            if number is None:
                raise InvalidRequest(f"{where}: {name} is missing (USD per million tokens)")
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number < float("inf"):
                raise InvalidRequest(f"{where}: {name} must be a number of at least 0, got {number!r}")
        cached = value.get("cached_input")
        return cls(float(value["input"]), float(value["output"]), None if cached is None else float(cached))


#: The prices of a service that charges nothing (the web chat services, the embedded model).
FREE = Prices(0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """What one provider's model can take and do. ``None`` means not stated."""

    provider: str
    model: str
    context_window: int | None = None  # tokens, prompt and answer together
    max_output_tokens: int | None = None
    max_chars: int | None = None  # a character budget, where the service states one
    streaming: bool = True
    system_message: bool = True
    tools: bool = False
    prefill: bool = False  # can continue a partial assistant message
    aliases: tuple[str, ...] = ()
    prices: Prices | None = None  # None: not known (its tokens are counted, their cost is 0)

    def input_budget(self, max_tokens: int | None = None) -> int | None:
        """Tokens left for the prompt once the answer's share is reserved."""
        if self.context_window is None:
            return None
        reserve = max_tokens or self.max_output_tokens or 0
        return max(self.context_window - reserve, 0)


_FIELDS = {f.name: f for f in dataclasses.fields(ModelRecord)}
_INT_FIELDS = ("context_window", "max_output_tokens", "max_chars")
_BOOL_FIELDS = ("streaming", "system_message", "tools", "prefill")


class ModelCatalog:
    """Model records keyed by (provider, model), case-insensitive on the provider name."""

    def __init__(self, records: Iterable[ModelRecord] = ()) -> None:
        self._records: dict[tuple[str, str], ModelRecord] = {}
        self._aliases: dict[tuple[str, str], tuple[str, str]] = {}  # (provider, alias) -> record key
        for record in records:
            self.add(record)

    def add(self, record: ModelRecord) -> None:
        key = (record.provider.lower(), record.model)
        self._records[key] = record
        for alias in record.aliases:
            self._aliases[(key[0], alias)] = key

    def override(self, provider: str, model: str, **fields: Any) -> ModelRecord:
        """Set fields of a record (created if absent); unknown or mistyped fields are refused."""
        for name, value in fields.items():
            _check_field(name, value, f"{provider}/{model}")
        current = self.get(provider, model) or ModelRecord(provider=provider, model=model)
        record = dataclasses.replace(current, **fields)
        self.add(record)
        return record

    def get(self, provider: str, model: str) -> ModelRecord | None:
        """The record for exactly this provider and model (or one of its aliases)."""
        key = (provider.lower(), model)
        record = self._records.get(key)
        if record is None and key in self._aliases:
            record = self._records.get(self._aliases[key])
        return record

    def providers_for(self, model: str) -> list[ModelRecord]:
        """Every record that serves ``model`` (by its own name or an alias)."""
        return [r for r in self.records() if r.model == model or model in r.aliases]

    def limits(self, model: str, provider: str | None = None) -> ModelRecord:
        """The record for ``model`` (at ``provider`` when given); unknown -> ModelNotSupported."""
        found = [self.get(provider, model)] if provider else self.providers_for(model)
        records = [r for r in found if r is not None]
        if not records:
            where = f" at {provider}" if provider else ""
            raise ModelNotSupported(f"the catalog has no model {model!r}{where}", model=model, param="model")
        return records[0]

    def records(self) -> list[ModelRecord]:
        return sorted(self._records.values(), key=lambda r: (r.provider.lower(), r.model))

    def load_toml(self, path: Path) -> None:
        """Lay the ``[[models]]`` entries of a TOML file over the catalog."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidRequest(f"cannot read the model catalog {path}: {exc}") from exc
        entries = data.get("models", [])
        if not isinstance(entries, list):
            raise InvalidRequest(f"{path}: 'models' must be an array of tables ([[models]])")
        for index, entry in enumerate(entries):
            where = f"{path}: models[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("provider"), str) \
                    or not isinstance(entry.get("model"), str):
                raise InvalidRequest(f"{where} needs string fields 'provider' and 'model'")
            fields = {k: v for k, v in entry.items() if k not in ("provider", "model")}
            if "aliases" in fields and isinstance(fields["aliases"], list):
                fields["aliases"] = tuple(fields["aliases"])
            if "prices" in fields:
                fields["prices"] = Prices.of(fields["prices"], f"{where}: prices")
            try:
                self.override(entry["provider"], entry["model"], **fields)
            except InvalidRequest as exc:
                raise InvalidRequest(f"{where}: {exc.message}") from None


def _check_field(name: str, value: Any, where: str) -> None:
    if name not in _FIELDS or name in ("provider", "model"):
        valid = ", ".join(n for n in _FIELDS if n not in ("provider", "model"))
        raise InvalidRequest(f"{where}: unknown field {name!r}; valid fields: {valid}")
    if name in _INT_FIELDS and value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                                       or value <= 0):
        raise InvalidRequest(f"{where}: {name} must be a positive integer, got {value!r}")
    if name in _BOOL_FIELDS and not isinstance(value, bool):
        raise InvalidRequest(f"{where}: {name} must be true or false, got {value!r}")
    if name == "prices" and value is not None and not isinstance(value, Prices):
        raise InvalidRequest(f"{where}: prices must be a table of input, output and cached_input")
    if name == "aliases" and not (isinstance(value, tuple) and all(isinstance(a, str) for a in value)):
        raise InvalidRequest(f"{where}: aliases must be a list of strings")


class _DefaultCatalog:
    """The process-wide catalog, built from the registry and the user's models.toml on first use."""

    def __init__(self) -> None:
        self._catalog: ModelCatalog | None = None
        self._lock = threading.Lock()

    def get(self) -> ModelCatalog:
        with self._lock:
            if self._catalog is None:
                built = ModelCatalog(record for source in _record_sources for record in source())
                user_file = config_dir() / "models.toml"
                if user_file.is_file():
                    built.load_toml(user_file)
                self._catalog = built
            return self._catalog

    def reset(self) -> None:
        with self._lock:
            self._catalog = None


_default = _DefaultCatalog()
_record_sources: list[Callable[[], Iterable[ModelRecord]]] = []


def add_record_source(source: Callable[[], Iterable[ModelRecord]]) -> None:
    """Build the process-wide catalog from ``source()``'s records too (the provider registry calls
    this for its providers, so the catalog needs no import of it)."""
    _record_sources.append(source)
    _default.reset()


def catalog() -> ModelCatalog:
    """The process-wide catalog (registry records plus the user's ``models.toml``)."""
    return _default.get()


def reset_catalog() -> None:
    """Forget the process-wide catalog; the next :func:`catalog` call rebuilds it."""
    _default.reset()
