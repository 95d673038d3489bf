"""The curated public surface stays complete and importable."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import patchbay
import patchbay.errors
import patchbay.events


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
