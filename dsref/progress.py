"""Terminal output: a step-wise progress bar on stderr for long runs (golden writes, full-dims
diffs), lines wrapped at 100 columns, a closed stdout."""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator


def wanted(quiet: bool = False) -> bool:
    """Show progress only on an interactive stderr and when not asked to be quiet."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress_steps(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    """A ``step(description)`` callback driving a transient rich progress bar (or nothing)."""
    if not enabled:
        yield lambda _desc: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<22}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=total)
        started = [0]

        def step(desc: str) -> None:  # steps started before this one are complete
            bar.update(task, description=desc, completed=started[0])
            started[0] += 1

        yield step
        bar.update(task, completed=total)


def wrap(line: str, hang: str | None = None, width: int = 100) -> str:
    """``line`` as is when it fits ``width`` columns, else wrapped with its continuation lines
    indented ``hang`` (default: under its text, past a leading ``- `` / ``· `` bullet)."""
    if len(line) <= width:
        return line
    if hang is None:
        body = line.lstrip(" ")
        hang = line[:len(line) - len(body)] + ("  " if body.startswith(("- ", "· ", "* ")) else "")
    return textwrap.fill(line, width=width, subsequent_indent=hang, break_long_words=False,
                         break_on_hyphens=False)


def quiet_broken_pipe() -> int:
    """stdout was closed early (``dsref list | head``): not an error. Point stdout at devnull
    so the interpreter's final flush does not raise again; returns 0."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0

