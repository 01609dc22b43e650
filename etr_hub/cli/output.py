"""Consoles and output helpers: data on stdout, diagnostics and progress on stderr."""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from typing import Any

from rich.console import Console

# Piped output gets a wide console so tables are not squeezed to 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """Strict JSON on stdout: NaN/Infinity (which JSON has not) become null."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, default=str, ensure_ascii=False, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def note(message: str) -> None:
    err.print(f"[dim]{message}[/dim]", highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", highlight=False, markup=True)


def short(sha: str | None, n: int = 12) -> str:
    return sha[:n] if sha else "-"


@contextmanager
def progress(quiet: bool = False):
    """A rich progress bar with ETA on stderr; disabled for --json and non-terminals."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=err, disable=quiet, transient=False,
    )
    with bar:
        yield bar
