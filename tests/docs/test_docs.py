"""The documentation holds together: cited protocol anchors exist, README's Python compiles.

Code cites the wire facts as ``docs/protocols.md#<anchor>``; a renamed heading would leave those
citations pointing nowhere, so every one is checked against the headings (GitHub's anchor rules).
README's Python blocks must run when pasted into a file, so each must compile as a plain script:
a top-level ``await`` is a SyntaxError there (``tests/docs/test_readme_examples.py`` runs them).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import ROOT

README = ROOT / "README.md"
PROTOCOLS = ROOT / "docs" / "protocols.md"
CITATION = re.compile(r"docs/protocols\.md#([\w-]+)")
FENCE = re.compile(r"^( *)(```+|~~~+)(.*)$")
#: The modules that speak (or replicate) a protocol of docs/protocols.md, and so must cite it.
CITING = [
    "patchbay/providers/liaobots/current.py",
    "patchbay/providers/liaobots/legacy.py",
    "patchbay/providers/aichatonline.py",
    "patchbay/providers/openai_compatible.py",
    "tests/replicas/liaobots.py",
    "tests/replicas/liaobots_legacy.py",
    "tests/replicas/aichatonline.py",
    "tests/replicas/openai_fake.py",
]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text (code blocks skipped; repeats get -1, -2, ...)."""
    found: set[str] = set()
    fence: str | None = None
    for line in markdown.splitlines():
        match = FENCE.match(line)
        if match:
            marker = match.group(2)
            if fence is None:
                fence = marker
            elif marker.startswith(fence) and not match.group(3).strip():
                fence = None
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fence is None and heading:
            anchor = base = github_anchor(heading.group(1))
            repeat = 0
            while anchor in found:
                repeat += 1
                anchor = f"{base}-{repeat}"
            found.add(anchor)
    return found


def citations() -> list[tuple[str, int, str]]:
    """(file, line, anchor) of every ``docs/protocols.md#<anchor>`` in patchbay/, tests/ and README."""
    files = [README, *sorted((ROOT / "patchbay").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [(str(path.relative_to(ROOT)), number, m.group(1)) for m in CITATION.finditer(line)]
    return found


@dataclass(frozen=True)
class Block:
    """One fenced ```python block of a Markdown file: where it starts and its (dedented) code."""

    line: int
    code: str


def python_blocks(path: Path = README) -> list[Block]:
    """The ```python blocks of ``path``, dedented (a block inside a list item is indented)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    indent = fence = ""
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if start is None and match and match.group(3).strip() == "python":
            start, indent, fence = number, match.group(1), match.group(2)
        elif start is not None and match and match.group(1) == indent and match.group(2) == fence:
            body = "\n".join(lines[start:number - 1])
            blocks.append(Block(start, textwrap.dedent(body) + "\n"))
            start = None
    assert start is None, f"{path.name}: the ```python block at line {start} is never closed"
    return blocks


# -- protocol anchors -------------------------------------------------------------------------------


def test_the_anchor_rule_is_githubs() -> None:
    assert github_anchor("Liaobots auth flow") == "liaobots-auth-flow"
    assert github_anchor("Liaobots (current generation)") == "liaobots-current-generation"
    assert github_anchor("OpenAI Retry-After") == "openai-retry-after"
    assert github_anchor("The `x-auth-code` header, v2.0") == "the-x-auth-code-header-v20"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### b_c\n") == {"a", "a-1", "b_c"}


def test_every_cited_protocol_anchor_is_a_heading() -> None:
    headings = anchors(PROTOCOLS.read_text(encoding="utf-8"))
    cited = citations()
    assert len(cited) >= len(CITING), "the code should cite docs/protocols.md sections"
    missing = [f"{path}:{line}: #{anchor}" for path, line, anchor in cited if anchor not in headings]
    assert not missing, "cited anchors with no heading in docs/protocols.md:\n" + "\n".join(missing)


def test_the_protocol_pages_own_links_resolve() -> None:
    text = PROTOCOLS.read_text(encoding="utf-8")
    links = re.findall(r"\]\(#([\w-]+)\)", text)
    assert links, "docs/protocols.md has a table of contents"
    assert sorted(set(links) - anchors(text)) == []


@pytest.mark.parametrize("name", CITING)
def test_each_protocol_module_cites_docs_protocols(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    docstring = text.split('"""', 2)[1]
    assert CITATION.search(docstring), f"{name}: the module docstring should cite docs/protocols.md#<section>"
    assert "shared/protocols.md" not in text


def test_readme_points_at_docs_protocols() -> None:
    text = README.read_text(encoding="utf-8")
    assert "docs/protocols.md" in text
    assert "shared/protocols.md" not in text


# -- README's Python blocks -------------------------------------------------------------------------


def test_a_top_level_await_does_not_compile() -> None:
    """The check below relies on this: a plain script may not await at top level."""
    with pytest.raises(SyntaxError):
        compile("async def f():\n    pass\nawait f()\n", "example.py", "exec")
    with pytest.raises(SyntaxError):
        compile("async for x in y:\n    pass\n", "example.py", "exec")


def test_readme_has_python_blocks() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 5
    assert all(block.code.strip() for block in blocks)


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: f"README-line-{block.line}")
def test_readme_python_block_compiles_as_a_script(block: Block) -> None:
    try:
        compile(block.code, f"README.md:{block.line}", "exec")
    except SyntaxError as error:
        pytest.fail(f"README.md's block at line {block.line} is not a runnable script "
                    f"(top-level await? wrap it in `async def main()` + `asyncio.run(main())`): {error}")
