"""The package keeps the shape of ../shared/architecture.md: pyproject.toml's import-linter
contracts hold on the tree, they fail on an upward import (at module level, inside a function or
under ``TYPE_CHECKING``), and no import cycle exists, counting imports inside functions.

The tree is checked in this process through import-linter's use-case function (its CLI entry point
would reconfigure the process's logging). The negative checks run ``lint-imports`` on a copy of the
package in a temporary directory: the copy must be found as ``patchbay`` in place of the imported
package, which only a fresh interpreter can do, so those tests carry the ``process`` tier. No cache
is written (``cache_dir=None``, ``--no-cache``): running this changes no file in the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import importlinter.api  # its import configures import-linter (readers of the config files, the file system)
import pytest
from importlinter.application import use_cases

from tests.support.paths import ROOT

PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sysconfig.get_path("scripts")) / "lint-imports"


def test_the_contracts_hold_on_the_tree(capsys: pytest.CaptureFixture[str]) -> None:
    passed = use_cases.lint_imports(config_filename=str(PYPROJECT), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert passed, report
    assert "0 broken" in report


def test_the_contracts_cover_the_layers_and_libraries_they_promise() -> None:
    """The contracts are in force as configured: a layers contract that is exhaustive (every
    top-level module has a layer) and the forbidden contracts of the HTTP libraries and redis."""
    contracts = {c["id"]: c for c in importlinter.api.read_configuration(str(PYPROJECT))["contracts_options"]}
    assert contracts["layers"]["type"] == "layers"
    assert contracts["layers"]["exhaustive"] == "True"
    layers = [name.strip() for layer in contracts["layers"]["layers"] for name in layer.split("|")]
    assert layers[0] == "cli" and layers[-1] == "redact"
    assert {"net", "chat", "providers", "routing", "settings", "server", "client"} <= set(layers)
    http_clients = set(contracts["http-clients"]["forbidden_modules"])
    assert {"curl_cffi", "aiohttp", "httpx", "requests", "urllib3"} <= http_clients
    assert contracts["redis"]["forbidden_modules"] == ["redis"]


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "patchbay", tmp_path / "patchbay", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    return tmp_path


def _lint_copy(root: Path, contract: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the copy at ``root``: the copy is found first (the working directory and
    ``PYTHONPATH``), rich's lines are wide enough not to wrap a module name."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "300", "NO_COLOR": "1"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "--contract", contract],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)


def _append(path: Path, text: str, marker: str) -> int:
    """Appends ``text`` to a module; returns the line number of the line of it holding ``marker``."""
    source = path.read_text()
    if not source.endswith("\n"):
        source += "\n"
    path.write_text(source + text)
    return source.count("\n") + next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


UPWARD_IMPORTS = {
    "module level": "import patchbay.routing\n",
    "inside a function": "\n\ndef _reach_up() -> object:\n    from patchbay.routing import Router\n\n"
                         "    return Router\n",
    "under TYPE_CHECKING": "\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import patchbay.routing\n",
}


@pytest.mark.process
def test_the_copy_passes_untouched(tmp_path: Path) -> None:
    """The negative tests below are meaningful: the copy, as copied, keeps every contract."""
    result = _lint_copy(_copy_of_the_package(tmp_path), "layers")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KEPT" in result.stdout


@pytest.mark.process
@pytest.mark.parametrize("where", UPWARD_IMPORTS)
def test_an_upward_import_breaks_the_layers_contract(tmp_path: Path, where: str) -> None:
    root = _copy_of_the_package(tmp_path)
    line = _append(root / "patchbay" / "chat" / "messages.py", UPWARD_IMPORTS[where], "patchbay.routing")
    result = _lint_copy(root, "layers")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout
    assert "patchbay.chat is not allowed to import patchbay.routing" in result.stdout
    assert f"patchbay.chat.messages -> patchbay.routing (l.{line})" in result.stdout, result.stdout


@pytest.mark.process
def test_a_module_without_a_layer_breaks_the_layers_contract(tmp_path: Path) -> None:
    root = _copy_of_the_package(tmp_path)
    (root / "patchbay" / "newcomer.py").write_text('"""A module nobody placed in a layer."""\n')
    result = _lint_copy(root, "layers")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "patchbay.newcomer" in result.stdout


@pytest.mark.process
def test_an_http_client_outside_net_breaks_its_contract(tmp_path: Path) -> None:
    root = _copy_of_the_package(tmp_path)
    line = _append(root / "patchbay" / "providers" / "registry.py", "import curl_cffi\n", "curl_cffi")
    result = _lint_copy(root, "http-clients")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"patchbay.providers.registry -> curl_cffi (l.{line})" in result.stdout, result.stdout


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in edges:
                    continue
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(edges[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"]}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": []}) == []


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    """grimp (import-linter's graph) records every import statement, wherever it stands."""
    graph = grimp.build_graph("patchbay", cache_dir=None)
    edges = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    assert cycles(edges) == []
