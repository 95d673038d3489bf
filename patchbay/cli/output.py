"""Terminal or not: rich tables, Markdown and spinners on a terminal, plain text for pipes and files.

Everything that draws goes through here, so each command decides what to show and never how.
``rich`` is imported only when a terminal needs it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["AnswerView", "ago", "is_terminal", "seconds", "table"]

MARKDOWN_REFRESH = 0.1  # seconds between re-renders of a streaming answer


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default stdout) is a terminal."""
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def seconds(value: float | None) -> str:
    """``0.123`` -> ``"0.12 s"``; None -> ``"-"``."""
    return "-" if value is None else f"{value:.2f} s"


def ago(when: float | None, now: float | None = None) -> str:
    """How long ago ``when`` (Unix seconds) was, roughly: ``"5 min ago"``."""
    if when is None:
        return "-"
    delta = max(0.0, (time.time() if now is None else now) - when)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return f"{int(delta)} s ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
          flexible: Sequence[str] = ()) -> None:
    """Print rows under headers: a rich table on a terminal, aligned columns otherwise.

    On a narrow terminal only the ``flexible`` columns wrap; the others keep their width.
    """
    if is_terminal():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        view = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
        for index, header in enumerate(headers):
            if header in flexible:
                view.add_column(header, overflow="fold")
            else:
                view.add_column(header, no_wrap=True, min_width=max([len(header), *(len(row[index]) for row in rows)]))
        for row in rows:
            view.add_row(*row)
        Console().print(view)
        return
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


class AnswerView:
    """Shows an answer while it streams.

    On a terminal the text is rendered as Markdown (re-rendered at most every
    :data:`MARKDOWN_REFRESH` seconds, printed whole at the end), after a spinner that runs until
    the first text arrives, which covers a model loading or a slow provider. Otherwise the text is
    written as it comes, and the spinner goes to stderr only if that is a terminal.
    """

    def __init__(self, waiting: str, *, rich: bool | None = None) -> None:
        self.waiting = waiting
        self.rich = is_terminal() if rich is None else rich
        self._parts: list[str] = []
        self._live: Any = None
        self._console: Any = None
        self._status: Any = None
        self._rendered = 0.0

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __enter__(self) -> AnswerView:
        if self.rich:
            from rich.console import Console
            from rich.live import Live
            from rich.spinner import Spinner

            self._console = Console()
            self._live = Live(Spinner("dots", text=self.waiting, style="dim"), console=self._console,
                              transient=True, refresh_per_second=10, vertical_overflow="crop")
            self._live.start()
        elif is_terminal(sys.stderr):
            from rich.console import Console

            self._status = Console(stderr=True).status(self.waiting)
            self._status.start()
        return self

    def write(self, text: str) -> None:
        self._parts.append(text)
        if self._live is not None:
            now = time.monotonic()
            if now - self._rendered >= MARKDOWN_REFRESH:
                from rich.markdown import Markdown

                self._live.update(Markdown(self.text))
                self._rendered = now
            return
        self._stop_status()
        sys.stdout.write(text)
        sys.stdout.flush()

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            from rich.markdown import Markdown

            self._live.stop()
            self._live = None
            if self.text:
                self._console.print(Markdown(self.text))
            return
        self._stop_status()
        if self.text and not self.text.endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
