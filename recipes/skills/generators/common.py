"""What every skill generator shares: the problem record, numbers as people type them, digits by place."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    key: str  # canonical, phrasing-free: decides the split
    slots: dict  # what a template fills in
    kind: str  # the answer kind: integer | integer_list | roman | binary | hex
    answer: str  # gold, in the gold format
    response: str  # the worked, tutor-style reply
    form: str  # which template family applies (e.g. "add", "to_roman")


def fmt(n: int, rng: random.Random, sep_p: float = 0.3) -> str:
    """An integer as typed: thousands separators sometimes (1,234), plain digits otherwise."""
    if abs(n) >= 1000 and rng.random() < sep_p:
        return f"{n:,}"
    return str(n)


HELD_OUT = 3  # the last templates of each form: eval phrasings only, never trained on (tasks.generate)

PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")


def places(n: int) -> str:
    """n >= 0 by place: `4821 = 4 thousands, 8 hundreds, 2 tens, 1 ones`. The column steps then
    find a digit by its place name, not by counting positions from the right (which a small model
    gets wrong: it read 377's tens digit as 3)."""
    digits = str(n)
    named = [f"{d} {PLACES[len(digits) - 1 - i]}" for i, d in enumerate(digits)]
    return f"{n} = {', '.join(named)}"
