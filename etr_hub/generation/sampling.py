"""How the next token is chosen: penalties over the answer so far, then greedy or temperature + top-p."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

NEG_INF = float("-inf")
MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy: logits / 1e-300 overflow to inf and NaN


class SamplingSettings(Protocol):
    """What a request sets (the hub's options, an expert's GenSettings)."""

    @property
    def temperature(self) -> float: ...
    @property
    def top_p(self) -> float: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def repetition_penalty(self) -> float: ...
    @property
    def presence_penalty(self) -> float: ...
    @property
    def frequency_penalty(self) -> float: ...


def penalize(
    logits: torch.Tensor,
    counts: Counter[int],
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> torch.Tensor:
    """Logits of the tokens already in the answer (`counts`: id -> times), lowered.

    repetition_penalty p (transformers'/vLLM's): a seen token's logit l becomes l / p if l > 0
    else l * p. presence/frequency (OpenAI's): l - presence - frequency * count."""
    if not counts or (repetition_penalty == 1.0 and presence_penalty == 0.0 and frequency_penalty == 0.0):
        return logits
    ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)  # (S,)
    times = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)  # (S,)
    seen = logits[ids]  # (S,)
    if repetition_penalty != 1.0:
        seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
    seen = seen - frequency_penalty * times - presence_penalty
    return logits.index_put((ids,), seen)  # a copy: the caller's logits stay eq. 1's


def sample_index(
    logits: torch.Tensor, *, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> int:
    """Greedy when temperature is (about) 0, else temperature + nucleus (top-p) sampling. Logits
    the model made NaN never win, and a distribution that is not finite falls back to greedy.
    Greedy picks where the logits are; sampling draws on the CPU (the generator's device), so a
    seed picks the same tokens from the same logits on any device."""
    logits = torch.nan_to_num(logits.float(), nan=NEG_INF)  # (V + N,)
    if temperature < MIN_TEMPERATURE:
        return int(logits.argmax())
    logits = logits.cpu()
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)  # (V + N,) the max maps to 0: no overflow
    if not bool(probs.isfinite().all()) or not float(probs.sum()) > 0:
        return int(logits.argmax())
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)  # (V + N,), (V + N,)
        before = sorted_p.cumsum(-1) - sorted_p  # (V + N,) mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # keep the smallest set reaching top_p
        return int(order[torch.multinomial(sorted_p, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Sampling:
    """How the next token is chosen, and the answer's tokens so far (what the penalties see)."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    counts: Counter[int] = field(default_factory=Counter)

    @classmethod
    def make(
        cls,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        *,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        answer: Iterable[int] = (),
    ) -> Sampling:
        """`answer`: tokens already in this answer (e.g. the meta model's, before an expert took over)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        return cls(
            float(temperature),
            float(top_p),
            gen,
            float(repetition_penalty),
            float(presence_penalty),
            float(frequency_penalty),
            Counter(answer),
        )

    @classmethod
    def of(cls, settings: SamplingSettings, answer: Iterable[int] = ()) -> Sampling:
        """From a request's settings (the hub's options or an expert's GenSettings: same field names)."""
        return cls.make(
            settings.temperature,
            settings.top_p,
            settings.seed,
            repetition_penalty=settings.repetition_penalty,
            presence_penalty=settings.presence_penalty,
            frequency_penalty=settings.frequency_penalty,
            answer=answer,
        )

    def pick(self, logits: torch.Tensor) -> int:
        logits = penalize(logits, self.counts, self.repetition_penalty, self.presence_penalty, self.frequency_penalty)
        return sample_index(logits, temperature=self.temperature, top_p=self.top_p, generator=self.generator)

    def observe(self, ids: Iterable[int]) -> None:
        """Count tokens that joined the answer."""
        self.counts.update(ids)
