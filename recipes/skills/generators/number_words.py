"""Number words → numerals: a number in words (0–999,999) as people write it, one group of three at a time."""

from __future__ import annotations

import random

from etr_hub.eval.answers import ONES, TENS
from recipes.skills.generators.common import Problem

TEMPLATES: dict[str, list[str]] = {
    "from_words": [
        "What is {w} in digits?",
        "write {w} as a number",
        "How do you write {w} in numerals?",
        'Could you please convert "{w}" to digits?',
        "{w} in numbers?",
        "The cheque says {w}. What number is that?",
        "Please write {w} using digits.",
        "what number is {w}",
        "I need {w} written as a number for a form, thanks!",
        "Turn '{w}' into digits, please.",
        "Convert the words {w} to a number.",
        "Hey, how would I type {w} with digits?",
        "My grandma wrote {w} in her letter; what's that as a number?",
        "Can you give me the numeric form of {w}?",
        "what's {w} in figures",
        "Type {w} as a plain number, please.",
    ],
}


def group_words(n: int, style: dict) -> str:
    """1-999 in words: `eight hundred (and) twenty-one`, hyphenated or not, British `and` or not."""
    hundreds, rest = divmod(n, 100)
    words = [f"{ONES[hundreds]} hundred"] if hundreds else []
    if rest:
        tens, ones = divmod(rest, 10)
        low = ONES[rest] if rest < 20 else TENS[tens] + (style["hyphen"] + ONES[ones] if ones else "")
        words.append(("and " if style["and"] and hundreds else "") + low)
    return " ".join(words)


def _group_line(n: int, text: str) -> str:
    """One group of up to three digits read off its words: `eight hundred twenty-one = 8 hundreds + 21 = 821`."""
    hundreds, rest = divmod(n, 100)
    return f"{text} = {hundreds} hundreds + {rest} = {n}" if hundreds else f"{text} = {n}"


def sample(rng: random.Random) -> Problem:
    """A number in words (0-999,999) as people write it, to plain digits, one group of three at a time."""
    digits = rng.choices([2, 3, 4, 5, 6], weights=[1, 2, 3, 2, 2])[0]  # mostly the long ones people ask about
    n = rng.randint(10 ** (digits - 1) if digits > 2 else 0, 10**digits - 1)
    style = {"hyphen": "-" if rng.random() < 0.8 else " ", "and": rng.random() < 0.3}
    thousands, rest = divmod(n, 1000)
    high, low = group_words(thousands, style), group_words(rest, style)
    if n == 0:
        text, lines = "zero", ["zero = 0"]
    elif not thousands:
        text, lines = low, [_group_line(rest, low)]
    else:
        joint = ", " if rest and rng.random() < 0.15 else " "
        joint += "and " if style["and"] and 0 < rest < 100 else ""
        text = f"{high} thousand" + (joint + low if rest else "")
        lines = [f"thousands: {_group_line(thousands, high)}"]
        lines.append(f"the rest: {_group_line(rest, low)}, three digits: {rest:03d}" if rest else "the rest: 000")
        lines.append(f"{thousands} thousand, {rest:03d} -> {n}")
    if rng.random() < 0.2:
        text = text[0].upper() + text[1:]
    response = "\n".join(lines) + f"\nSo {text} is {n}."
    return Problem(f"words:{n}", {"w": text}, "integer", str(n), response, "from_words")
