"""Roman numerals: integer → Roman numeral (1–3999) and back, by place-value parts."""

from __future__ import annotations

import random

from etr_hub.eval.answers import ROMAN_VALUES, to_roman
from recipes.skills.generators.common import Problem

TEMPLATES: dict[str, list[str]] = {
    "to_roman": [
        "What is {n} in Roman numerals?",
        "convert {n} to roman numerals",
        "How do you write {n} in Roman numerals?",
        "Could you please write the number {n} as a Roman numeral?",
        "{n} in roman?",
        "Roman numeral for {n}",
        "I'm making a clock face, how would {n} look in Roman numerals?",
        "Please convert {n} into Roman numerals.",
        "Write {n} using Roman numerals.",
        "What's the Roman numeral for {n}?",
        "Express {n} in Roman numerals, please.",
        "My movie's copyright year is {n}; what is that as a Roman numeral?",
    ],
    "from_roman": [
        "What number is {r}?",
        "convert {r} to a number",
        "What is the Roman numeral {r} in regular numbers?",
        "Could you please tell me what {r} means as a number?",
        "{r} in arabic numerals?",
        "Value of the Roman numeral {r}",
        "I saw {r} on a building, what year is that?",
        "Please convert the Roman numeral {r} to an integer.",
        "What does {r} stand for?",
        "What's {r} as a decimal number?",
        "Translate {r} into a normal number, please.",
        "The film credits end with {r}. Which year is it?",
    ],
}


def roman_parts(n: int) -> list[tuple[int, str]]:
    """Place-value parts of n: 1994 -> [(1000, M), (900, CM), (90, XC), (4, IV)]."""
    parts = []
    for place in (1000, 100, 10, 1):
        digit_value = (n // place % 10) * place
        if digit_value:
            rest, sym = digit_value, ""
            for v, s in ROMAN_VALUES:
                while rest >= v:
                    sym, rest = sym + s, rest - v
            parts.append((digit_value, sym))
    return parts


def sample(rng: random.Random) -> Problem:
    n = rng.randint(1, 3999) if rng.random() < 0.85 else rng.randint(1, 100)
    parts, numeral = roman_parts(n), to_roman(n)
    values, syms = " + ".join(str(v) for v, _ in parts), " + ".join(s for _, s in parts)
    if rng.random() < 0.5:
        response = f"{n} = {values}\n= {syms}\nSo {n} in Roman numerals is {numeral}."
        return Problem(f"to_roman:{n}", {"n": n}, "roman", numeral, response, "to_roman")
    response = f"{numeral} = {syms}\n= {values}\nSo {numeral} is {n}."
    return Problem(f"from_roman:{n}", {"r": numeral}, "integer", str(n), response, "from_roman")
