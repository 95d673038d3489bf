"""README's command reference lists exactly the commands, arguments and options ``--help`` shows."""

from __future__ import annotations

import re

import click
import pytest

from patchbay.cli import cli
from tests.support.paths import README

OPTION = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
HELP = {"-h", "--help"}


def reference() -> dict[tuple[str, ...], str]:
    """Command path -> its synopsis, from the code block under "### Command reference"."""
    text = README.read_text(encoding="utf-8").split("### Command reference", 1)[1]
    block = text.split("```", 2)[1]
    entries: dict[tuple[str, ...], str] = {}
    current: tuple[str, ...] | None = None
    for line in block.splitlines()[1:]:
        if line.startswith("patchbay"):
            words = line.split()[1:]
            group: click.Command = cli
            path: list[str] = []
            while words and isinstance(group, click.Group) and words[0] in group.commands:
                group = group.commands[words[0]]
                path.append(words.pop(0))
            current = tuple(path)
            assert current not in entries, f"README lists {' '.join(current)} twice"
            entries[current] = " ".join(words)
        elif line.strip():
            assert line.startswith(" ") and current is not None, f"unexpected line {line!r}"
            entries[current] += " " + line.strip()
    return entries


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], click.Command]:
    """Every command a user can run: leaves, and groups that do something by themselves."""
    found: dict[tuple[str, ...], click.Command] = {}
    if path == () or group.invoke_without_command:
        found[path] = group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(commands(command, (*path, name)))
        else:
            found[(*path, name)] = command
    return found


def options(command: click.Command) -> set[str]:
    return {opt for param in command.params if isinstance(param, click.Option)
            for opt in (*param.opts, *param.secondary_opts)} - HELP


def test_every_command_is_in_the_reference() -> None:
    assert sorted(reference()) == sorted(commands())


@pytest.mark.parametrize("path", sorted(commands()), ids=lambda path: " ".join(("patchbay", *path)))
def test_the_reference_lists_exactly_the_options_and_arguments(path: tuple[str, ...]) -> None:
    command = commands()[path]
    synopsis = reference()[path]
    assert set(OPTION.findall(synopsis)) == options(command)
    for argument in (p for p in command.params if isinstance(p, click.Argument)):
        name = argument.human_readable_name  # PROMPT, ID, [NAME]...
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", synopsis), name
    shown = click.Context(command, info_name="patchbay").get_help()  # what --help prints
    for option in options(command):
        assert re.search(rf"(?<![\w-]){re.escape(option)}\b", shown)
