"""Write one benchmark's section into docs/benchmarks.md, replacing its previous run."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_section"]

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the command to refresh it.\n"


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the section between ``<!-- name:start -->`` and ``<!-- name:end -->`` (or append it)."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    block = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
