"""`etr-hub`: the root command. Library imports happen inside commands to keep --help fast."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from etr_hub.cli.flags import as_flags
from etr_hub.cli.output import clean
from etr_hub.config import settings
from etr_hub.errors import EtrHubError

try:  # Typer ≥ 0.2x raises usage errors from its own copy of Click, older Typer from Click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException  # type: ignore[assignment]


# The CLI draws its own rich progress; silence the libraries' bars and advisory logging, and
# never reach for the Hugging Face Hub unless asked to (no network is the normal case here).
# These configure third-party libraries through their own variables, before they are imported.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' own weight-loading bars
if not settings().allow_download:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class ErrorHandlingGroup(TyperGroup):
    """Turn library errors into one line on stderr and a non-zero exit, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EtrHubError as e:
            if settings().debug:
                raise
            one_line = clean(as_flags(str(e)).replace("\n", " "))  # it may quote a manifest: no control codes
            print(f"error: {one_line}", file=sys.stderr)
            sys.stderr.flush()
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            ctx.exit(130)
        except (typer.Exit, typer.Abort, SystemExit, ClickException):
            raise  # Typer prints usage errors (exit 2) and handles exits itself
        except Exception as e:  # a bug: still no traceback unless asked for
            if settings().debug:
                raise
            print(
                f"error: internal error: {type(e).__name__}: {clean(str(e).splitlines()[0]) if str(e) else ''} — "
                "rerun with ETR_HUB_DEBUG=1 for a traceback and report it",
                file=sys.stderr,
            )
            ctx.exit(70)


app = typer.Typer(
    cls=ErrorHandlingGroup,
    name="etr-hub",
    help="Plug expert LLMs into a frozen generalist LLM as one learned token each (Expert Token Routing).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("etr-hub")
        except PackageNotFoundError:  # run from a checkout without installing
            from etr_hub import __version__ as number
        print(f"etr-hub {number}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def _register() -> None:
    from etr_hub.cli import chat, expert, explain, export, init, query_set, serve, train, tune
    from etr_hub.cli import eval as eval_cli

    app.command("init")(init.init)
    expert.app.command("tune")(tune.tune)
    app.add_typer(expert.app, name="expert", help="Register, list, inspect, tune and export expert bundles.")
    app.add_typer(
        query_set.app, name="query-set", help="Build expert query sets (where the expert beats the meta model)."
    )
    app.command("train-token")(train.train_token)
    app.add_typer(
        export.app, name="export", help="Export the meta model with its expert tokens for an inference engine."
    )
    app.command("chat")(chat.chat)
    app.command("explain")(explain.explain)
    app.command("serve")(serve.serve)
    app.add_typer(
        eval_cli.app,
        name="eval",
        help="Measure routing and answer accuracy against baselines (MMLU-Expert; open-answer tasks).",
    )
    app.add_typer(
        __import__("etr_hub.cli.store", fromlist=["app"]).app,
        name="store",
        help="Maintain the content-addressed store (gc).",
    )


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
