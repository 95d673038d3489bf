"""Where the tests find the repository's files, wherever in tests/ a test module lives."""

from __future__ import annotations

from pathlib import Path

__all__ = ["README", "ROOT", "SCHEMAS", "SHARED"]

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/paths.py -> .
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"  # ../shared, beside the checkout
SCHEMAS = SHARED / "openai" / "schemas.json"
