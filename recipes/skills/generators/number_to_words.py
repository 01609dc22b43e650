"""Numerals → number words: a number in digits (0–999,999) written out in English words, as on a cheque."""

from __future__ import annotations

import random

from recipes.skills.generators.common import Problem, places
from recipes.skills.generators.number_words import group_words

TEMPLATES: dict[str, list[str]] = {
    "to_words": [
        "How do you write {n} in words?",
        "Write {n} in words.",
        "write out {n} in words please",
        "Spell out the number {n}.",
        "What is {n} in words?",
        "I'm writing a cheque for {n} dollars. How do I write the amount in words?",
        "Could you spell out {n} for me?",
        "how would you say {n} in english words",
        "Convert {n} to words.",
        "{n} in words?",
        "Please write the number {n} out in full, in words.",
        "What's {n} written out in letters?",
        "Can you put {n} into words for a form I'm filling in?",
        "Type out {n} in words.",
        "hey can you write {n} in words",
        "Please spell {n} in words for me.",
        "{n} spelled out, please.",
        "Write the amount {n} in words, like on a cheque.",
        "What does {n} look like written in words?",
        "Say {n} in words.",
        "I need {n} in words, thanks!",
        "Quick one: {n} in words?",
        "words for {n}?",
        "How do I spell {n}?",
        "Could you type {n} out in letters?",
        "Put the number {n} in words, please.",
        "Hi! What's {n} in English words?",
        "need {n} as words pls",
        "Turn {n} into words.",
        "Hello, please write {n} in words",
        "Hey, type {n} as words please",
        "How is {n} written in words?",
        "Express {n} in words, please.",
    ],
}


def canonical_words(n: int) -> str:
    """0-999,999 in words as a cheque writes it: hyphenated tens, no `and`, no comma."""
    style = {"hyphen": "-", "and": False}
    thousands, rest = divmod(n, 1000)
    if n == 0:
        return "zero"
    high = f"{group_words(thousands, style)} thousand" if thousands else ""
    return " ".join(w for w in (high, group_words(rest, style)) if w)


def _words_line(n: int) -> str:
    """One group of up to three digits put into words: `213 = 2 hundreds + 13 = two hundred thirteen`."""
    hundreds, rest = divmod(n, 100)
    text = canonical_words(n)
    return f"{n} = {hundreds} hundreds + {rest} = {text}" if hundreds and rest else f"{n} = {text}"


def sample(rng: random.Random) -> Problem:
    """A number in digits (0-999,999) written out in words: the thousands group is found by place
    name (as arithmetic finds its columns), then each group of three is read on its own."""
    digits = rng.choices([1, 2, 3, 4, 5, 6], weights=[1, 2, 4, 5, 4, 4])[0]
    n = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)
    thousands, rest = divmod(n, 1000)
    lines = []
    if thousands:
        lines.append(places(n))
        lines.append(f"= {thousands} thousand" + (f" + {rest}" if rest else ""))
        lines.append(_words_line(thousands))
    if rest or not thousands:
        lines.append(_words_line(rest))
    answer = canonical_words(n)
    response = "\n".join(lines) + f"\nSo {n} in words is {answer}."
    return Problem(f"to_words:{n}", {"n": n}, "words", answer, response, "to_words")
