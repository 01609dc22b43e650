"""`etr-hub train-token`: learn one expert token on cached meta-model states."""

from __future__ import annotations

from pathlib import Path

import typer

from etr_hub.cli.checks import manifest_field, number
from etr_hub.cli.checks import seed as seed_range
from etr_hub.cli.output import err, lit, note, print_json, safe


def train_token(
    name: str = typer.Argument(..., help="The expert's name.", callback=manifest_field("name")),
    query_set: str = typer.Option(None, "--query-set", help="Query set to train on (default: the one named NAME)."),
    epochs: int = typer.Option(
        None, "--epochs", min=1, help="Fixed number of epochs (default: until the loss plateaus, at most --max-epochs)."
    ),
    max_epochs: int = typer.Option(300, "--max-epochs", min=1),
    lr: float = typer.Option(5e-4, "--lr", callback=number(gt=0), help="AdamW learning rate (paper: 5e-4)."),
    weight_decay: float = typer.Option(
        1.0, "--weight-decay", callback=number(ge=0), help="AdamW weight decay (paper: 1.0)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed", callback=seed_range),
    out: Path = typer.Option(
        None, "--out", help="Bundle directory to write (default: $ETR_HUB_HOME/bundles/NAME-VERSION)."
    ),
    version: str = typer.Option(
        None, "--version", callback=manifest_field("version"), help="Bundle version (default: next patch version)."
    ),
    description: str = typer.Option("", "--description", callback=manifest_field("description")),
    license: str = typer.Option(
        "unknown", "--license", callback=manifest_field("license"), help="Licence of the bundle (SPDX id)."
    ),
    provider: str = typer.Option(
        None,
        "--provider",
        callback=manifest_field("provider"),
        help="Who provides the expert (default: your user name).",
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Overwrite --out and an expert of the same name and version."
    ),
    word_negatives: bool = typer.Option(
        True,
        "--general-negatives/--no-general-negatives",
        help="Also train on etr-hub's everyday prompts as negatives, so the token does not fire on small talk.",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Train NAME's expert token (only that row; the meta model and other experts stay frozen), write and register the bundle."""
    from etr_hub.cli.progress import bar_factory
    from etr_hub.registry import Registry
    from etr_hub.training.optimize import TrainSettings
    from etr_hub.training.train_token import BundleInfo
    from etr_hub.training.train_token import train_token as run

    cfg = TrainSettings(
        lr=lr, weight_decay=weight_decay, batch_size=batch_size, epochs=epochs, max_epochs=max_epochs, seed=seed
    )
    bundle = BundleInfo(
        out=out, version=version, description=description, license=license, provider=provider, replace=replace
    )
    reg = Registry.open()
    with bar_factory(quiet=json_out) as bars:
        res = run(
            reg,
            name,
            query_set=query_set,
            cfg=cfg,
            bundle=bundle,
            word_negatives=word_negatives,
            progress=bars,
            status=None if json_out else note,
        )
    summary = {
        "name": res.expert.name,
        "version": res.expert.version,
        "bundle": str(res.bundle.root),
        "token_sha256": res.expert.token_sha256,
        "queries": res.n_queries,
        "negatives": res.n_negatives,
        "epochs": res.outcome.epochs,
        "steps": res.outcome.steps,
        "final_loss": res.outcome.final_loss,
        "stopped": res.outcome.stopped,
        "train_routing_accuracy": res.train_routing_accuracy,
        "seconds": round(res.seconds, 3),
    }
    if json_out:
        print_json(summary)
        return
    err.print(
        f"trained [bold]{lit(name)}[/bold] {lit(res.expert.version)}: {res.outcome.epochs} epochs ({res.outcome.stopped}), final loss {res.outcome.final_loss:.4f}, "
        f"routes {res.train_routing_accuracy:.0%} of its {res.n_queries} queries + {res.n_negatives} negatives correctly; {res.seconds:.1f} s",
        highlight=False,
    )
    err.print(safe(f"bundle: {res.bundle.root} (registered)"), highlight=False)
