"""Adapters from the library's progress callbacks to rich progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from etr_hub.cli.output import progress


@contextmanager
def bar_factory(quiet: bool = False) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yields progress(description, total) -> advance(n), one rich task per call."""
    with progress(quiet) as bar:

        def factory(description: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        yield factory
