"""`etr-hub chat`: a terminal conversation with the meta model and its experts, as one assistant.

The answer streams to stdout as plain text; hand-off markers, warnings and notes go to stderr
(dim), so piped output stays clean. Lines from a pipe are read as user messages, one per line.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from etr_hub.cli.checks import number
from etr_hub.cli.common import open_hub
from etr_hub.cli.flags import as_flags
from etr_hub.cli.options import DeviceOption, DtypeOption, MemoryBudgetOption, MinPOption, json_option, seed_option
from etr_hub.cli.output import clean, err, lit, note, print_json, safe, warn
from etr_hub.errors import EtrHubError
from etr_hub.runtime.options import DEFAULT_MAX_NEW_TOKENS

HELP = (
    "/experts  list the experts · /route  show the last route record · /reset  forget the conversation · /exit  leave"
)


Once = Annotated[str | None, typer.Option("--once", help="Answer this one message and exit.")]
ChatJson = Annotated[bool, json_option("With --once (or piped input): print each answer as one JSON object.")]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Most tokens per answer.")]
Temperature = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        callback=number(ge=0),
        help="Default: the meta model's recommendation (embedded SmolLM2: 0.2). 0 = greedy, for exact reproduction.",
    ),
]
TopP = Annotated[
    float | None,
    typer.Option(
        "--top-p",
        callback=number(gt=0, le=1),
        help="Nucleus sampling mass (default: the meta model's recommendation, embedded SmolLM2: 0.9).",
    ),
]
RepetitionPenalty = Annotated[
    float | None,
    typer.Option(
        "--repetition-penalty",
        callback=number(gt=0),
        help=(
            "Divide the logits of tokens already in the answer (> 0; 1 = none; default: the meta model's "
            "recommendation, embedded SmolLM2: 1.2)."
        ),
    ),
]
ChatSeed = Annotated[int | None, seed_option("Seed for sampling: the same seed and settings give the same answer.")]
MaxPromptTokens = Annotated[
    int | None,
    typer.Option(
        "--max-prompt-tokens",
        min=1,
        help=(
            "Keep the conversation within this many tokens (oldest turns go first; default: the meta model's context)."
        ),
    ),
]
System = Annotated[str | None, typer.Option("--system", help="A system prompt for the conversation.")]
Expert = Annotated[str | None, typer.Option("--expert", help="Let this expert answer directly (no routing).")]


def chat(
    once: Once = None,
    json_out: ChatJson = False,
    max_new_tokens: MaxNewTokens = DEFAULT_MAX_NEW_TOKENS,
    temperature: Temperature = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: ChatSeed = None,
    max_prompt_tokens: MaxPromptTokens = None,
    system: System = None,
    expert: Expert = None,
    memory_budget_mb: MemoryBudgetOption = None,
    min_p: MinPOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Chat with the meta model; domain questions are handed to the expert whose token wins."""
    from etr_hub.runtime.options import check_settings

    piped = once is None and not sys.stdin.isatty()
    _check_request(once, json_out, piped, system)
    settings: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
        "max_prompt_tokens": max_prompt_tokens,
    }
    check_settings(**settings)  # before the model loads
    hub = open_hub(quiet=json_out, memory_budget_mb=memory_budget_mb, min_p=min_p, device=device, dtype=dtype)
    if expert is not None:
        hub.require_expert(expert)
    session = Session(hub, {**settings, "expert": expert}, system, json_out)
    if once is not None:
        session.ask(once)
        return
    if not piped:
        _banner(hub)
    session.loop(piped)


def _check_request(once: str | None, json_out: bool, piped: bool, system: str | None) -> None:
    """The message and the output mode, refused before any model loads."""
    from etr_hub.runtime.options import check_messages

    if once is not None and not once.strip():
        raise EtrHubError("empty message", 'pass the question as --once "TEXT"')
    if json_out and once is None and not piped:
        raise EtrHubError(
            "--json needs --once TEXT (or piped input)", 'e.g. etr-hub chat --once "Why is the sky blue?" --json'
        )
    check_messages(
        [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": once or "?"}]
    )


def _banner(hub) -> None:
    names = ", ".join(e.name for e in hub.experts) or "none"
    err.print(f"[bold]{lit(hub.meta_name)}[/bold] with {len(hub.experts)} expert(s): {lit(names)}", highlight=False)
    note(HELP + " · Ctrl-C stops an answer")


class Session:
    """Multi-turn state: the history, the last route record, and the slash commands."""

    def __init__(self, hub, settings: dict, system: str | None, json_out: bool):
        self.hub = hub
        self.settings = settings
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict[str, str]] = []
        self.json_out = json_out
        self.last: Any = None  # the last ChatResult

    def loop(self, piped: bool) -> None:
        lineno = 0
        while True:
            try:
                line = _read_line(lineno + 1) if piped else err.input("[bold green]you[/bold green] › ")
            except (EOFError, KeyboardInterrupt):
                if not piped:
                    err.print()
                return
            if line is None:
                return  # end of input
            lineno += 1
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return
                continue
            try:
                self.ask(text)
            except EtrHubError as exc:  # e.g. a message the model cannot take: say so, keep the session
                warn(as_flags(str(exc)))

    def command(self, text: str) -> bool:
        """Run a slash command; False means leave."""
        name = text.split()[0].lower()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.history, self.last = [], None
            note("conversation reset")
        elif name == "/experts":
            _experts_table(self.hub)
        elif name == "/route":
            _route_table(self.last)
        elif name == "/help":
            note(HELP)
        else:
            warn(f"unknown command {name} — {HELP}")
        return True

    def ask(self, text: str) -> None:
        messages = [*self.system, *self.history, {"role": "user", "content": text}]
        if self.json_out:
            result = self.hub.chat(messages, **self.settings)
            for message in result.warnings:
                warn(message)
            print_json(result.to_json())
            self._remember(text, result.text, result)
            return
        shown: list[str] = []
        events = self.hub.chat(messages, stream=True, **self.settings)
        try:
            result = _render(events, shown)
        except KeyboardInterrupt:
            events.close()
            _end_line(shown)
            note("(answer stopped)")
            self._remember(text, "".join(shown), None)
            return
        self._remember(text, result.text, result)

    def _remember(self, question: str, answer: str, result) -> None:
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        self.last = result


def _read_line(lineno: int) -> str | None:
    """One line from the pipe; None at its end. A line that is not UTF-8 is skipped with a warning
    (an empty line is returned in its place), so binary bytes on stdin do not end the session."""
    raw = sys.stdin.buffer.readline()
    if raw == b"":
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        warn(
            f"input line {lineno} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
            f"{exc.start + 1}); skipped it — send UTF-8 text"
        )
        return ""


def _render(events, shown: list[str]):
    """Stream the answer to stdout; markers and warnings to stderr. Returns the ChatResult."""
    from rich.text import Text

    from etr_hub.runtime import Done, RouteWarning, Switch, TextDelta

    for event in events:
        if isinstance(event, TextDelta):
            sys.stdout.write(clean(event.text, keep="\n\t"))  # a model may emit escape sequences
            sys.stdout.flush()
            shown.append(event.text)
        elif isinstance(event, Switch):
            s = event.switch
            where = f"at token {s.token_index}, p={s.probability:.2f}" if s.reason != "requested" else "as requested"
            sys.stdout.flush()
            lead = " " if shown and not shown[-1].endswith("\n") else ""
            err.print(Text.assemble(lead, safe(f"[→ {s.expert}, {where}]", style="dim"), " "), end="", highlight=False)
        elif isinstance(event, RouteWarning):
            _end_line(shown)
            warn(event.message)
        elif isinstance(event, Done):
            _end_line(shown, always=True)
            return event.result
    raise EtrHubError("the answer ended unexpectedly")


def _end_line(shown: list[str], always: bool = False) -> None:
    """Finish the current output line, so what follows starts on its own line."""
    if (shown and not shown[-1].endswith("\n")) or (always and not shown):
        sys.stdout.write("\n")
        sys.stdout.flush()
        shown.append("\n")


def _experts_table(hub) -> None:
    from rich.table import Table

    table = Table(title=safe(f"experts on {hub.meta_name}"))
    for col in ("name", "version", "backend", "label", "model"):
        table.add_column(col)
    for e in hub.experts:
        table.add_row(*map(safe, (e.name, e.version, e.backend, e.label or "-", e.reference)))
    for name, reason in hub.skipped:
        table.add_row(safe(name, style="dim"), "", "[yellow]skipped[/yellow]", "", safe(reason, style="dim"))
    if not hub.experts and not hub.skipped:
        note("no experts registered")
        return
    err.print(table)


def _route_table(result) -> None:
    if result is None:
        note("no answer yet")
        return
    if not result.route:
        note("the meta model answered alone")
        return
    from rich.table import Table

    table = Table(title="route of the last answer")
    for col in ("expert", "token index", "probability", "fell back", "reason"):
        table.add_column(col)
    for s in result.route:
        table.add_row(
            safe(s.expert),
            str(s.token_index),
            f"{s.probability:.4f}",
            "yes" if s.fell_back else "no",
            safe(s.reason or "-"),
        )
    err.print(table)
