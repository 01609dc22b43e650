"""`etr-hub explain "TEXT"`: why an expert was (or was not) chosen for a message."""

from __future__ import annotations

from typing import Annotated

import typer

from etr_hub.cli.common import open_hub
from etr_hub.cli.options import DeviceOption, DtypeOption, JsonOption, MinPOption
from etr_hub.cli.output import err, lit, out, print_json, safe
from etr_hub.errors import EtrHubError


def explain(
    text: Annotated[str, typer.Argument(help="A user message, as it would be asked in chat.")],
    json_out: JsonOption = False,
    top: Annotated[
        int, typer.Option("--top", min=0, help="How many word tokens to show next to the expert tokens.")
    ] = 10,
    min_p: MinPOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """At the routing position: every expert token's probability next to the top-K word tokens, and which would win."""
    if not text.strip():
        raise EtrHubError("empty message", 'pass the message to explain, e.g. etr-hub explain "Why do stars twinkle?"')
    hub = open_hub(quiet=json_out, min_p=min_p, device=device, dtype=dtype)
    result = hub.explain(text, top=top)
    if json_out:
        print_json({"meta_model": hub.meta_name, **result.to_json()})
        return
    _show(result)


def _show(result) -> None:
    from rich.table import Table

    calibrated = any(e.bias for e in result.experts)  # raw columns only where an operator set a bias
    table = Table(title=f"routing position {result.routing_position}: next-token probabilities (eq. 1)")
    table.add_column("#", justify="right")
    table.add_column("expert token")
    table.add_column("p", justify="right")
    if calibrated:
        table.add_column("bias", justify="right")
        table.add_column("raw p", justify="right")
    table.add_column("word token")
    table.add_column("p", justify="right")
    for i in range(max(len(result.experts), len(result.words))):
        e = result.experts[i] if i < len(result.experts) else None
        w = result.words[i] if i < len(result.words) else None
        raw = [f"{e.bias:+.3f}" if e else "", f"{e.raw_probability:.4f}" if e else ""] if calibrated else []
        table.add_row(
            str(i + 1),
            safe(e.name, style="bold" if e.name == result.winner else "") if e else "",
            f"{e.probability:.4f}" if e else "",
            *raw,
            safe(repr(w.token)) if w else "",
            f"{w.probability:.4f}" if w else "",
        )
    out.print(table)
    _verdict(result)


def _verdict(result) -> None:
    best = result.experts[0] if result.experts else None
    top_word = result.words[0] if result.words else None
    if best is None:  # a winner needs an expert token, so there is none either
        err.print("→ no experts are assembled: the meta model answers itself", highlight=False)
    elif result.winner is not None:
        err.print(
            f"→ routes to [bold]{lit(result.winner)}[/bold] (p={best.probability:.4f}; all expert tokens together "
            f"{result.p_any_expert:.4f})",
            highlight=False,
        )
    elif top_word is not None and best.logit > top_word.logit:  # it beat every word but not min_p
        err.print(
            safe(
                f"→ the meta model answers itself: the best expert token, {best.name} (p={best.probability:.4f}), is "
                f"under the minimum switch probability min_p={result.min_p:g}"
            ),
            highlight=False,
        )
    else:
        gap = (top_word.logit - best.logit) if top_word else float("nan")
        err.print(
            safe(
                f"→ the meta model answers itself: the best expert token, {best.name} (p={best.probability:.4f}), is "
                f"{gap:.2f} logits below the top word token"
                + (f" {top_word.token!r} (p={top_word.probability:.4f})" if top_word else "")
            ),
            highlight=False,
        )
