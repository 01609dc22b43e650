"""`etr-hub train-token`: learn one expert token on cached meta-model states."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from etr_hub.cli.checks import manifest_field, number
from etr_hub.cli.common import open_registry
from etr_hub.cli.options import DeviceOption, DtypeOption, JsonOption, SeedOption, manifest_option
from etr_hub.cli.output import err, lit, note, print_json, safe

Name = Annotated[str, typer.Argument(help="The expert's name.", callback=manifest_field("name"))]
QuerySet = Annotated[
    str | None, typer.Option("--query-set", help="Query set to train on (default: the one named NAME).")
]
Epochs = Annotated[
    int | None,
    typer.Option(
        "--epochs", min=1, help="Fixed number of epochs (default: until the loss plateaus, at most --max-epochs)."
    ),
]
MaxEpochs = Annotated[int, typer.Option("--max-epochs", min=1)]
Lr = Annotated[float, typer.Option("--lr", callback=number(gt=0), help="AdamW learning rate (paper: 5e-4).")]
WeightDecay = Annotated[
    float, typer.Option("--weight-decay", callback=number(ge=0), help="AdamW weight decay (paper: 1.0).")
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1)]
Out = Annotated[
    Path | None,
    typer.Option("--out", help="Bundle directory to write (default: $ETR_HUB_HOME/bundles/NAME-VERSION)."),
]
Version = Annotated[str | None, manifest_option("version", "Bundle version (default: next patch version).")]
Description = Annotated[str, manifest_option("description")]
License = Annotated[str, manifest_option("license", "Licence of the bundle (SPDX id).")]
Provider = Annotated[str | None, manifest_option("provider", "Who provides the expert (default: your user name).")]
Replace = Annotated[bool, typer.Option("--replace", help="Overwrite --out and an expert of the same name and version.")]
WordNegatives = Annotated[
    bool,
    typer.Option(
        "--general-negatives/--no-general-negatives",
        help="Also train on etr-hub's everyday prompts as negatives, so the token does not fire on small talk.",
    ),
]

Negatives = Annotated[
    Path | None,
    typer.Option(
        "--negatives",
        help="JSONL of prompts ('query') the token must leave to the meta model, e.g. requests no registered expert "
        "can answer; trained as negatives like the everyday prompts.",
    ),
]


def train_token(
    name: Name,
    query_set: QuerySet = None,
    epochs: Epochs = None,
    max_epochs: MaxEpochs = 300,
    lr: Lr = 5e-4,
    weight_decay: WeightDecay = 1.0,
    batch_size: BatchSize = 16,
    seed: SeedOption = 0,
    out: Out = None,
    version: Version = None,
    description: Description = "",
    license: License = "unknown",
    provider: Provider = None,
    replace: Replace = False,
    word_negatives: WordNegatives = True,
    negatives: Negatives = None,
    json_out: JsonOption = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Train NAME's expert token (only that row; the meta model and other experts stay frozen), write and register the bundle."""  # noqa: E501 - one line: rich help keeps a docstring's line breaks
    from etr_hub.cli.progress import bar_factory
    from etr_hub.training.optimize import TrainSettings
    from etr_hub.training.train_token import BundleInfo
    from etr_hub.training.train_token import train_token as run

    cfg = TrainSettings(
        lr=lr, weight_decay=weight_decay, batch_size=batch_size, epochs=epochs, max_epochs=max_epochs, seed=seed
    )
    bundle = BundleInfo(
        out=out, version=version, description=description, license=license, provider=provider, replace=replace
    )
    reg = open_registry()
    with bar_factory(quiet=json_out) as bars:
        res = run(
            reg,
            name,
            query_set=query_set,
            cfg=cfg,
            bundle=bundle,
            word_negatives=word_negatives,
            negatives=negatives,
            progress=bars,
            status=None if json_out else note,
            device=device,
            dtype=dtype,
        )
    if json_out:
        print_json(_summary(res))
        return
    _show(name, res)


def _summary(res: Any) -> dict[str, Any]:
    """The --json object (its keys are part of the CLI's interface)."""
    return {
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


def _show(name: str, res: Any) -> None:
    err.print(
        f"trained [bold]{lit(name)}[/bold] {lit(res.expert.version)}: {res.outcome.epochs} epochs "
        f"({res.outcome.stopped}), final loss {res.outcome.final_loss:.4f}, "
        f"routes {res.train_routing_accuracy:.0%} of its {res.n_queries} queries + {res.n_negatives} negatives "
        f"correctly; {res.seconds:.1f} s",
        highlight=False,
    )
    err.print(safe(f"bundle: {res.bundle.root} (registered)"), highlight=False)
