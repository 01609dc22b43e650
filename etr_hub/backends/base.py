"""What every expert backend implements, and what the runtime hands it when an expert takes over."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from etr_hub.errors import EtrHubError
from etr_hub.models.chat import has_chat_template, plain_prompt
from etr_hub.models.refs import ModelRef

if TYPE_CHECKING:
    from etr_hub.generation.runner import CausalRunner


class ExpertError(EtrHubError):
    """An expert could not load or answer; the meta model finishes the answer instead."""


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    ref: ModelRef  # resolved: adapter paths point into the registry's store
    allowed_env: frozenset[str] = frozenset()  # environment variables the operator let it read (--allow-env)


@dataclass
class Handoff:
    """The answer so far, as the expert must continue it.

    Chat mode (`messages` set): the conversation plus the meta model's partial assistant turn,
    which the expert continues in its own chat template (the turn stays open).
    Raw mode (`prompt` set): a plain text continuation, no template.
    """

    messages: list[dict[str, str]] | None = None
    partial: str = ""  # the meta model's text so far in this assistant turn
    prompt: str | None = None
    meta_ids: list[int] | None = None  # meta prompt + partial as the meta model's token ids
    answer_ids: list[int] | None = None  # the partial alone as the meta model's token ids
    meta_tokenizer: Any = None
    meta_runner: CausalRunner | None = None  # the meta model's, read-only: its cache holds meta_ids


@dataclass
class GenSettings:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=list)  # remote servers can stop early; the hub cuts anyway
    ignore_eos: bool = False
    repetition_penalty: float = 1.0  # over the answer's tokens, the meta model's partial answer included
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Chunk:
    text: str
    tokens: int = 1  # completion tokens this chunk accounts for
    finish: str | None = None  # set on the last chunk when the backend knows ("stop" | "length")


class ExpertBackend:
    """Load lazily (`load`), answer (`generate`, an iterator of chunks that raises on failure),
    report the memory it holds beyond the meta model, and let go (`unload`).

    A backend is installed as an entry point in the group `etr_hub.backends`; the entry point's
    name is its kind (set on each instance as `kind`). It serves expert references of that kind
    and of the kinds in `ref_kinds`."""

    ref_kinds: ClassVar[tuple[str, ...]] = ()  # reference kinds it serves besides its own kind
    kind: str = ""  # its entry point's name, set when the registry creates it

    def __init__(self, spec: ExpertSpec, meta: Any):
        self.spec = spec
        self.meta = meta  # the meta model's LoadedModel (LoRA experts share its weights)

    @classmethod
    def meta_layer_to_keep(cls, spec: ExpertSpec) -> int | None:
        """A decoder layer whose input the meta runner should keep for this expert to continue
        the meta model's cache from (read before the expert loads; None: no such layer)."""
        return None

    def load(self) -> None:
        raise NotImplementedError

    def generate(self, handoff: Handoff, settings: GenSettings) -> Iterator[Chunk]:
        raise NotImplementedError

    @property
    def memory_bytes(self) -> int:
        return 0

    def unload(self) -> None:
        pass


def render_prompt_text(tokenizer: Any, handoff: Handoff) -> str:
    """The handoff as text: the conversation in `tokenizer`'s chat template (assistant turn open)
    followed by the partial answer, or the raw prompt."""
    if handoff.prompt is not None:
        return handoff.prompt
    messages: Sequence[Mapping[str, str]] = handoff.messages or []
    if tokenizer is not None and has_chat_template(tokenizer):
        head = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
    else:
        head = plain_prompt(messages)  # the answer text carries its own leading space
    return head + handoff.partial
