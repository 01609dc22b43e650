"""Consoles and output helpers: data on stdout, diagnostics and progress on stderr."""

from __future__ import annotations

import json
import math
import re
import sys
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

# Piped output gets a wide console so tables are not squeezed to 80 columns. No emoji codes:
# a manifest's ":warning:" prints as written.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)

# C0/C1 controls and DEL (ESC starts CSI/OSC sequences, 0x9b is a one-byte CSI), and the bidi
# overrides/isolates, which reorder what follows on screen.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: Any, keep: str = "") -> str:
    """Untrusted text (from a bundle, the registry or a model) with its control characters made
    visible: ESC prints as the four characters `\\x1b`. Characters in `keep` (e.g. "\\n") stay."""
    return _UNSAFE.sub(lambda m: m[0] if m[0] in keep else _visible(m[0]), str(text))


def _visible(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def safe(text: Any, style: str = "") -> Text:
    """Untrusted text as a rich renderable: printed literally, never as markup (a label "[/]")."""
    return Text(clean(text), style=style)


def lit(text: Any) -> str:
    """Untrusted text to put inside a markup string, e.g. f"[bold]{lit(name)}[/bold]"."""
    return escape(clean(text))


def print_json(data: Any) -> None:
    """Strict JSON on stdout: NaN/Infinity (which JSON has not) become null; control characters are escaped."""
    text = json.dumps(_finite(data), indent=2, default=str, ensure_ascii=False, allow_nan=False)
    # json.dumps escapes C0 controls in strings; DEL, C1 and bidi controls become \uXXXX too (same value)
    sys.stdout.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", text) + "\n")
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
    """A dim line on stderr; the message is printed literally (it may quote a manifest)."""
    err.print(safe(message, style="dim"), highlight=False)


def warn(message: str) -> None:
    err.print(Text("warning:", style="yellow"), safe(message), highlight=False)


def short(sha: str | None, n: int = 12) -> str:
    return sha[:n] if sha else "-"


@contextmanager
def progress(quiet: bool = False):
    """A rich progress bar with ETA on stderr; disabled for --json and non-terminals."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )
    with bar:
        yield bar
