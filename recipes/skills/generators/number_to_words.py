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


# phrasings composed from parts, for a later training phase (build.py's LATER_PHASES `composed`): a small adapter
# copied its number wrongly under one held-out wording (`Hey, type 724 as words please` -> 524), so it sees many
# shapes of request around the number. The parts leave out the held-out phrasings' words (`type`, `express`,
# `as words`, `written in words`), so that the eval still measures wording it never saw; only a `typed` phase
# (TYPING below) lets `type` in.
ASKS = (
    "write",
    "write out",
    "spell out",
    "spell",
    "put",
    "turn",
    "convert",
    "change",
    "give me",
    "show me",
    "say",
    "translate",
    "jot down",
    "print",
    "render",
    "read out",
)
POLITE = ("", "", "", "please ", "can you ", "could you ", "would you ", "can u ", "I need you to ", "help me ")
OBJECTS = ("{n}", "{n}", "{n}", "the number {n}", "the amount {n}", "the figure {n}", "this number, {n},", "my {n}")
MANNERS = (
    "in words",
    "in words",
    "in English words",
    "in full words",
    "into words",
    "in letters",
    "in word form",
    "in plain English",
    "in written-out form",
    "longhand",
    "out in full",
    "for a cheque",
    "for a check",
    "the way you'd say it",
)
QUESTIONS = (
    "what is {n} {manner}",
    "what's {n} {manner}",
    "how do I write {n} {manner}",
    "how would you write {n} {manner}",
    "how do you say {n} {manner}",
    "what does {n} look like {manner}",
    "{n} {manner}",
    "{n}, {manner}",
)
ENDS = ("", ".", "?", "!", " please", ", please.", " thanks", " - thanks!", " pls", ", cheers")


# typing verbs, for a fourth phase (build.py's LATER_PHASES `typed`): after three phases the adapter still read
# `Hey, type 724 as words please` as 524 (first digit `5` at p=0.67), while `Hey, write 724 …` was right at p=1.00.
# Half the imperatives of a typed phase use one of these; the held-out `as words`/`express` stay out.
TYPING = ("type", "type out", "type up", "key in", "tap out")


def composed_template(rng: random.Random, problem: Problem, typed: bool = False) -> str:
    """A request for {n} in words (for any `problem` of the skill) composed from parts: an imperative (`could you
    spell out the amount {n} in letters, please.`) or a question (`what's {n} in word form?`), as people type them;
    `typed`: half the imperatives ask with a typing verb (`hey, type 724 in words`)."""
    manner = rng.choice(MANNERS)
    if rng.random() < 0.6:
        obj = rng.choice(OBJECTS)
        polite = rng.choice(POLITE)
        ask = rng.choice(TYPING) if typed and rng.random() < 0.5 else rng.choice(ASKS)
        text = f"{polite}{ask} {obj} {manner}"
    else:
        text = rng.choice(QUESTIONS).replace("{manner}", manner)
    text += rng.choice(ENDS)
    return text[0].upper() + text[1:] if rng.random() < 0.6 else text


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
