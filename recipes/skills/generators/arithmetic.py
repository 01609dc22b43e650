"""Arithmetic: +, − of integers up to 4 digits, × of up to 3-digit by 2-digit integers, worked column by column."""

from __future__ import annotations

import random

from recipes.skills.generators.common import HELD_OUT, PLACES, Problem, places

TEMPLATES: dict[str, list[str]] = {
    "add": [
        "What is {a} + {b}?",
        "what's {a}+{b}",
        "Calculate {a} plus {b}.",
        "{a} + {b} = ?",
        "Could you please add {a} and {b} for me?",
        "What do you get when you add {b} to {a}?",
        "Quick question: {a} plus {b}?",
        "Find the sum of {a} and {b}.",
        "I need {a} + {b}, thanks!",
        "Compute {a} + {b}",
        "Hey, what's {a} and {b} added together?",
        "Please work out {a} plus {b}.",
        "Add {b} to {a}, please.",
        "What is {a} increased by {b}?",
        "What's the total of {a} and {b}?",
        "Can you tell me what {a} plus {b} is?",
        "{a} plus {b} is what?",
        "If you add {b} to {a}, what do you get?",
        "How much is {a} + {b}?",
        "Add {a} to {b}.",
        "Sum {a} and {b} please",
    ],
    "sub": [
        "What is {a} - {b}?",
        "what's {a}-{b}",
        "Calculate {a} minus {b}.",
        "{a} - {b} = ?",
        "Could you please subtract {b} from {a}?",
        "What is {a} take away {b}?",
        "Quick question: {a} minus {b}?",
        "Find the difference {a} - {b}.",
        "I need {a} - {b}, thanks!",
        "Compute {a} - {b}",
        "Hey, what's {a} take away {b}?",
        "Please work out {a} minus {b}.",
        "Subtract {b} from {a}.",
        "subtract {b} from {a} pls",
        "If you take {b} from {a}, what's left?",
        "What is {b} subtracted from {a}?",
        "Deduct {b} from {a}, please.",
        "Remove {b} from {a}: what remains?",
        "What is {a} less {b}?",
        "Reduce {a} by {b}.",
        "Can you tell me what {a} minus {b} is?",
        "Starting from {a}, take away {b}.",
        "Take {b} off {a}.",
        "How much is {a} - {b}?",
        "Take {b} away from {a}.",
        "What do you get if you subtract {b} from {a}?",
    ],
    "mul": [
        "What is {a} * {b}?",
        "what's {a}x{b}",
        "Calculate {a} times {b}.",
        "{a} × {b} = ?",
        "Could you please multiply {a} by {b}?",
        "What is {a} multiplied by {b}?",
        "Quick question: {a} times {b}?",
        "Find the product of {a} and {b}.",
        "I need {a} * {b}, thanks!",
        "Compute {a} x {b}",
        "Hey, what's {a} times {b}?",
        "Please work out {a} × {b}.",
        "What do you get when you multiply {a} by {b}?",
        "Can you tell me what {a} times {b} is?",
        "{a} multiplied by {b} equals?",
        "Work out the product {a} × {b}, please.",
        "How much is {a} times {b}?",
        "Multiply {a} and {b}.",
        "What's the product of {a} and {b}?",
    ],
}


def _digit(n: int, i: int) -> int:
    return n // 10**i % 10


def _add_columns(x: int, y: int) -> tuple[list[str], int]:
    """Column addition of non-negative x + y, ones first, each line growing the partial result."""
    lines, carry, partial = [places(x), places(y)], 0, ""
    for i in range(max(len(str(x)), len(str(y)))):
        a, b = _digit(x, i), _digit(y, i)
        s = a + b + carry
        terms = f"{a} + {b}" + (f" + {carry}" if carry else "")
        partial = str(s % 10) + partial
        carry = s // 10
        lines.append(f"{PLACES[i]}: {terms} = {s}" + (", carry 1" if carry else "") + f" -> {partial}")
    if carry:
        partial = "1" + partial
        lines.append(f"carry 1 -> {partial}")
    return lines, int(partial)


def _sub_columns(x: int, y: int) -> tuple[list[str], int]:
    """Column subtraction of x - y with x >= y >= 0, ones first, borrowing."""
    lines, borrow, partial = [places(x), places(y)], 0, ""
    for i in range(len(str(x))):
        a, b = _digit(x, i), _digit(y, i)
        top = a - borrow
        left = f"{a} - {borrow} - {b}" if borrow else f"{a} - {b}"
        if top < b:
            d, borrow = top + 10 - b, 1
            line = f"{left}: borrow, {top + 10} - {b} = {d}"
        else:
            d, borrow = top - b, 0
            line = f"{left} = {d}"
        partial = str(d) + partial
        lines.append(f"{PLACES[i]}: {line} -> {partial}")
    return lines, int(partial)


def _mul_digit(x: int, d: int, carry_apart: bool = False) -> tuple[str, int]:
    """x times one digit d, ones first, on one line (x's places are written above it), each carry added in the same
    step as its place's product (`6 x 8 + 3 = 51`); with `carry_apart` the product is written first (`6 x 8 = 48,
    48 + 3 = 51`): the fused step was where the fourth phase's adapter slipped most (7 of 8 wrong products in a
    sample)."""
    parts, carry, partial = [], 0, ""
    for i in range(len(str(x))):
        q = _digit(x, i) * d
        p = q + carry
        step = f"{_digit(x, i)} x {d}"
        if not carry:
            step += f" = {p}"
        elif carry_apart:
            step += f" = {q}, {q} + {carry} = {p}"
        else:
            step += f" + {carry} = {p}"
        parts.append(f"{PLACES[i]} {step}")
        partial = str(p % 10) + partial
        carry = p // 10
    if carry:
        partial = str(carry) + partial
    return "; ".join(parts) + f" -> {int(partial)}", int(partial)


def comparison(x: int, y: int) -> list[str]:
    """Which of two magnitudes is larger, decided in writing before a difference's sign, from their places (which
    the column steps already read): at the first place from the top where the digits differ, a missing place read
    as 0 (`thousands 1 > 0, so 1984 > 998`). The eighth phase's adapter chose the sign in one token and got 6 of its
    12 eval misses so (`1984 - 998 = -(…)`); a comparison written first, before the operation, by counting digits
    (`1984 has 4 digits and 998 has 3`), broke it (README, "phase 9")."""
    steps = []
    for i in reversed(range(max(len(str(x)), len(str(y))))):
        dx, dy = _digit(x, i), _digit(y, i)
        steps.append(f"{PLACES[i]} {dx} {'>' if dx > dy else '<' if dx < dy else '='} {dy}")
        if dx != dy:
            break
    sign = ">" if x > y else "<" if x < y else "="
    return [places(x), places(y), f"{', '.join(steps)}, so {x} {sign} {y}"]


def arithmetic_response(op: str, a: int, b: int, carry_apart: bool = False, compare: bool = False) -> tuple[str, int]:
    sym = {"add": "+", "sub": "-", "mul": "x"}[op]
    value = {"add": a + b, "sub": a - b, "mul": a * b}[op]
    head = f"{a} {sym} {b}"
    lines: list[str] = []
    if op == "mul":
        x, y = abs(a), abs(b)
        if (a < 0) != (b < 0):
            lines.append(f"{head} = -({x} x {y})")
        elif a < 0:
            lines.append(f"{head} = {x} x {y}")
        lines += [f"{x} x {y}:", places(x)]
        if y < 10:
            line, _ = _mul_digit(x, y, carry_apart)
            lines.append(f"{x} x {y}: {line}")
        else:
            tens, ones = divmod(y, 10)
            lines.append(f"{places(y)}, so {x} x {y} = {x} x {ones} + {x} x {tens * 10}")
            l1, p1 = _mul_digit(x, ones, carry_apart)
            l2, p2 = _mul_digit(x, tens, carry_apart)
            lines.append(f"{x} x {ones}: {l1}")
            lines.append(f"{x} x {tens}: {l2}, so {x} x {tens * 10} = {p2 * 10}")
            cols, _ = _add_columns(p1, p2 * 10)
            lines.append(f"{p1} + {p2 * 10}:")
            lines += cols
    else:
        # reduce to one column operation on magnitudes: x + y, or x - y with x >= y
        sa, sb = a, (b if op == "add" else -b)  # a + sb
        if sa >= 0 and sb >= 0:
            kind, x, y, neg = "add", sa, sb, False
        elif sa < 0 and sb < 0:
            kind, x, y, neg = "add", -sa, -sb, True
        else:
            pos, negv = (sa, -sb) if sa >= 0 else (sb, -sa)
            kind, x, y, neg = ("sub", pos, negv, False) if pos >= negv else ("sub", negv, pos, True)
        plain = f"{x} {'+' if kind == 'add' else '-'} {y}"
        if compare and kind == "sub":  # the question, its magnitudes by place and compared, then the sign
            lines += [f"{head}:", *comparison(*((y, x) if neg else (x, y)))]
        if not (op == "add" and a >= 0 and b >= 0) and not (op == "sub" and a >= b >= 0):
            lines.append(f"{head} = -({plain})" if neg else f"{head} = {plain}")
        cols, _ = (_add_columns if kind == "add" else _sub_columns)(x, y)
        if compare and kind == "sub" and not neg:  # x and y by place are the lines just written
            cols = cols[2:] if plain == head else [f"{plain}:", *cols[2:]]
        else:
            cols = [f"{plain}:", *cols]
        lines += cols
    lines.append(f"So {head} = {value}.")
    return "\n".join(lines), value


def problem(op: str, a: int, b: int, carry_apart: bool = False, compare: bool = False) -> Problem:
    response, value = arithmetic_response(op, a, b, carry_apart, compare)
    return Problem(f"{op}:{a}:{b}", {"a": a, "b": b}, "integer", str(value), response, op)


def _restyled(p: Problem, **style: bool) -> Problem:
    """The same problem (read from its key) answered in another style."""
    op, a, b = p.key.split(":")
    return problem(op, int(a), int(b), **style)


def carry_apart(p: Problem) -> Problem:
    """The same problem answered with each place's product written before its carry is added: the style of the
    arithmetic expert's training phases from the fifth on (README, "On wordings written blind")."""
    return _restyled(p, carry_apart=True)


def compared(p: Problem) -> Problem:
    """`carry_apart`, and each difference's sign decided after the question by comparing the numbers by place
    (`comparison`)."""
    return _restyled(p, carry_apart=True, compare=True)


def sample(rng: random.Random) -> Problem:
    op = rng.choices(["add", "sub", "mul"], weights=[3, 3, 4])[0]
    if op == "mul":
        a = rng.randint(2, 999) if rng.random() < 0.8 else rng.randint(2, 99)
        b = rng.randint(2, 99) if rng.random() < 0.85 else rng.randint(2, 9)
        if rng.random() < 0.1:
            a, b = (-a, b) if rng.random() < 0.5 else (a, -b)
    else:
        digits = rng.choice([1, 2, 2, 3, 3, 4, 4, 4])
        a = rng.randint(10 ** (digits - 1), 10**digits - 1)
        b = rng.randint(1, 10 ** rng.choice([1, 2, 3, 4]) - 1)
        if rng.random() < 0.15:
            a, b = (-a, b) if rng.random() < 0.6 else (a, -b)
    return problem(op, a, b)


def sample_unequal_lengths(rng: random.Random) -> Problem:
    """A sum or difference of two numbers of different lengths (4821 - 377, 958 - 2764), where the shorter
    number's digits have to be found by place name and the sign by comparing lengths: the mix `sample`
    gives these too rarely (the 92/100 adapter got 29/40 of 4-digit minus 3-digit differences)."""
    op = rng.choice(["add", "sub", "sub"])
    long_digits = rng.choice([3, 4, 4])
    short_digits = rng.randint(1, long_digits - 1)
    a = rng.randint(10 ** (long_digits - 1), 10**long_digits - 1)
    b = rng.randint(10 ** (short_digits - 1), 10**short_digits - 1)
    if rng.random() < 0.3:
        a, b = b, a
    return problem(op, a, b)


def sample_products(rng: random.Random) -> Problem:
    """A product of a 2- or 3-digit number by a 2-digit one (525 x 28), the form the fourth phase's adapter got wrong
    most (seed-7 eval questions: 32 of 46 products right in its own held-out phrasings, against 70 of 74 sums and
    differences), mostly a slip in one digit's partial product or in adding the two partial products."""
    a = rng.randint(100, 999) if rng.random() < 0.8 else rng.randint(10, 99)
    return problem("mul", a, rng.randint(10, 99))


def sample_product_shapes(rng: random.Random) -> Problem:
    """A product of every shape the skill covers, drawn evenly: 1-digit x 2-digit (6 x 17), 2 x 1, 2 x 2, 3 x 1 and
    3 x 2 digits, a tenth with a negative factor. `sample` rarely draws a 1-digit first factor, and the products
    focus never does: after a phase on it, 6 x 17 was worked as if 6 had a tens digit (`tens 6 x 7 = 42`)."""
    da, db = rng.choice([(1, 2), (2, 1), (2, 2), (3, 1), (3, 2)])
    a, b = rng.randint(max(2, 10 ** (da - 1)), 10**da - 1), rng.randint(max(2, 10 ** (db - 1)), 10**db - 1)
    if rng.random() < 0.1:
        a, b = (-a, b) if rng.random() < 0.5 else (a, -b)
    return problem("mul", a, b)


def sample_every_form(rng: random.Random) -> Problem:
    """Half a sum or difference of unequal lengths, half a product of any shape: after a phase on product shapes
    alone, products rose (seed-7 own phrasings 35 -> 43 of 46) and differences fell (33 -> 31 of 36)."""
    return sample_unequal_lengths(rng) if rng.random() < 0.5 else sample_product_shapes(rng)


def sample_signs(rng: random.Random) -> Problem:
    """A difference whose sign takes a look (for the `compared` style): two thirds of equal length, most sharing
    their leading digits (7615 - 7290, 6615 - 7022), the rest of unequal lengths in either order (1984 - 998), a
    tenth a sum with one negative operand."""
    digits = rng.choice([2, 3, 4, 4])
    a = rng.randint(10 ** (digits - 1), 10**digits - 1)
    if rng.random() < 2 / 3:
        shared = rng.randint(0, digits - 1)  # leading digits a and b have in common
        head = str(a)[:shared]
        tail = digits - shared
        lo = 0 if shared else 10 ** (tail - 1)
        b = int(head + str(rng.randint(lo, 10**tail - 1)).zfill(tail))
    else:
        b = rng.randint(1, 10 ** rng.randint(1, 4) - 1)
    a, b = (a, b) if rng.random() < 0.5 else (b, a)
    if rng.random() < 0.1:
        return problem("add", a, -b) if rng.random() < 0.5 else problem("add", -a, b)
    return problem("sub", a, b)


# Word problems, for a training phase (build.py's LATER_PHASES `composed`): the templates above never tell a story, and
# in wordings written blind the seventh phase's adapter misread the operation of most story problems (`I spent 86 on
# rent and 224 on groceries, what's the total?` -> `86 - 224`). {a} is always the first operand, wherever it stands.
STORIES: dict[str, tuple[str, ...]] = {
    "add": (
        "A library has {a} novels and {b} comics. How many books does it have in total?",
        "Sam scored {a} points in the first game and {b} in the second. How many points did he score altogether?",
        "There were {a} people at the concert on Friday and {b} on Saturday; how many came over both nights?",
        "My phone had {a} photos and I just took {b} more. How many photos are on it now?",
        "We planted {a} trees last year and {b} this year, how many trees is that in all?",
        "A farmer picked {a} kg of apples and then another {b} kg. What's the combined weight?",
        "the school had {a} pupils and {b} new ones joined, how many pupils now",
        "I walked {a} steps this morning and {b} steps this afternoon. Total steps?",
        "If I save {a} euros in January and {b} euros in February, how much have I saved?",
        "A shop sold {a} shirts on Monday and {b} on Tuesday. How many shirts did it sell on the two days?",
        "One train carries {a} passengers and another carries {b}. How many passengers are on both trains?",
        "Our town had {a} residents, then {b} moved in. What's the population now?",
        "There are {a} red marbles and {b} blue marbles in a jar, how many marbles are there?",
        "the invoice has two lines, {a} pounds and {b} pounds. what do I owe altogether?",
        "A recipe needs {a} grams of flour plus {b} grams of sugar; how many grams is that together?",
        "{a} votes went to the first candidate and {b} to the second. How many votes were cast?",
        "I had {a} followers and gained {b} more today. How many followers do I have now?",
        "The first part of the trip was {a} miles and the second {b} miles. How long was the whole trip?",
    ),
    "sub": (
        "My wallet had {a} pesos and I spent {b}. What's left in it?",
        "A tank held {a} litres and {b} litres leaked out. How much is still in the tank?",
        "There were {a} seats for sale and {b} were sold. How many are still available?",
        "The book has {a} pages and I've read {b}. How many pages are left to read?",
        "a store had {a} melons and sold {b}, how many melons remain",
        "the budget is {a} and we've used {b}, how much of the budget is left",
        "If {b} of the {a} chairs are taken, how many chairs are free?",
        "From {a} cm of ribbon I cut off {b} cm. How much ribbon is left?",
        "{a} people signed up but {b} cancelled. How many are still coming?",
        "A laptop cost {a} dollars last year and is {b} dollars cheaper now. What does it cost?",
        "I need {a} points to pass and I have {b}. How many more do I need?",
    ),
    # stories whose answer may be negative, the only ones a difference with a < b is asked in
    "sub_signed": (
        "The temperature was {a} degrees and fell by {b} degrees. What is it now?",
        "A diver is at {a} metres and goes down {b} metres. What is her new height?",
        "How many more is {a} than {b}?",
        "We scored {a} and they scored {b}. By how much did we win (negative if we lost)?",
        "My balance was {a} and I withdrew {b}. What's my balance now?",
        "A plane flying at {a} feet drops {b} feet. What's its altitude now?",
        "The score was {a}; after a penalty of {b} points, what is it?",
    ),
    "mul": (
        "There are {a} rows of seats with {b} seats in each row. How many seats are there?",
        "Each crate holds {b} bottles. How many bottles are in {a} crates?",
        "A printer prints {a} pages a minute. How many pages does it print in {b} minutes?",
        "If one notebook costs {a} cents, how many cents do {b} notebooks cost?",
        "{a} students each bring {b} pencils; how many pencils is that?",
        "A garden has {a} rows with {b} plants per row. How many plants in total?",
        "We need {b} chairs for each of {a} tables, how many chairs altogether?",
        "A worker earns {a} dollars a day. What does she earn in {b} days?",
        "How many eggs are in {a} cartons of {b} eggs?",
        "A car drives at {a} km per hour for {b} hours. How far does it go?",
        "an album has {a} pages with {b} stamps on each page, how many stamps",
        "what do {a} packs of {b} cards come to",
        "A building has {a} floors with {b} windows on every floor. How many windows does it have?",
        "If {a} people each pay {b} euros, what's the total?",
        "a bus has {b} seats. how many seats on {a} buses?",
        "{a} bags with {b} sweets in each: how many sweets?",
        "The hall is {a} tiles long and {b} tiles wide. How many tiles cover it?",
        "{a} parcels weigh {b} kg each. What do they weigh together?",
    ),
}


def casual(template: str, rng: random.Random) -> str:
    """A template as typed in a hurry: lower case, apostrophes and the final `?` or `.` dropped, sometimes."""
    t = template.lower() if rng.random() < 0.7 else template
    t = t.replace("'", "") if rng.random() < 0.7 else t
    return t.rstrip("?.!") if rng.random() < 0.7 else t


def composed_template(rng: random.Random, problem: Problem, typed: bool = False) -> str:
    """A word problem for `problem`'s operation (STORIES) two times in three, else one of the training templates typed
    casually (`whats the product of 303 and 98`); a negative operand gets a template, since stories count things."""
    training = TEMPLATES[problem.form][:-HELD_OUT]  # the eval's phrasings stay out
    a, b = problem.slots["a"], problem.slots["b"]
    if a >= 0 and b >= 0 and rng.random() < 2 / 3:
        stories = STORIES["sub_signed"] if problem.form == "sub" and a < b else STORIES[problem.form]
        return rng.choice(stories)
    return casual(rng.choice(training), rng)
