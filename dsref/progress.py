"""A step-wise progress bar on stderr for long runs (golden writes, full-dims diffs)."""

from __future__ import annotations

import contextlib
import os
import sys
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


def quiet_broken_pipe() -> int:
    """stdout was closed early (``dsref list | head``): not an error. Point stdout at devnull
    so the interpreter's final flush does not raise again; returns 0."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0

