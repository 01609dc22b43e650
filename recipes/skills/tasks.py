"""Generated skill questions and tutor-style answers for the skill experts: the four the project set
out to build (arithmetic, sorting, Roman numerals, base conversion) and number words, which
replaces the two that missed their target.

    python recipes/skills/tasks.py --out .work/skills/data --seed 0

Each skill is a problem generator (`sample_*`: a random problem, its canonical key and its gold
answer), a list of phrasings people type (`TEMPLATES`) and one worked answer style that ends with
the result stated once. Splits are by problem, not by row: a problem's canonical key (e.g.
`add:4821:377`) hashes to `train`, `pool` or `eval`, so no problem appears in two splits whatever
the seed or the phrasing. The eval split also uses phrasings held out of training (the last
`HELD_OUT` templates of each skill), so eval measures new wording as well as new numbers.

Gold formats (what `etr-hub eval tasks` compares after extraction): integers in plain digits with
an optional minus sign; sorted lists joined by ", "; Roman numerals in capitals; binary and hex as
bare digits, hex in capitals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root holds `recipes`

from etr_hub.eval.answers import ROMAN_VALUES, to_roman
from recipes.skills.phrasings import (
    ARITHMETIC_TEMPLATES,
    BASE_TEMPLATES,
    NUMBER_WORDS_TEMPLATES,
    ROMAN_TEMPLATES,
    SORTING_TEMPLATES,
)

SKILLS = ("arithmetic", "sorting", "roman", "base_conversion", "number_words")
SPLITS = {"train": range(0, 80), "pool": range(80, 90), "eval": range(90, 100)}  # % of problem-key hashes
HELD_OUT = 3  # templates per skill kept out of training phrasings


@dataclass(frozen=True)
class Problem:
    key: str  # canonical, phrasing-free: decides the split
    slots: dict  # what a template fills in
    kind: str  # the answer kind: integer | integer_list | roman | binary | hex
    answer: str  # gold, in the gold format
    response: str  # the worked, tutor-style reply
    form: str  # which template family applies (e.g. "add", "to_roman")


def split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return next(name for name, r in SPLITS.items() if bucket in r)


# ---------------------------------------------------------------- numbers as people write them
def fmt(n: int, rng: random.Random, sep_p: float = 0.3) -> str:
    """An integer as typed: thousands separators sometimes (1,234), plain digits otherwise."""
    if abs(n) >= 1000 and rng.random() < sep_p:
        return f"{n:,}"
    return str(n)


# ---------------------------------------------------------------- arithmetic
PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")


def places(n: int) -> str:
    """n >= 0 by place: `4821 = 4 thousands, 8 hundreds, 2 tens, 1 ones`. The column steps then
    find a digit by its place name, not by counting positions from the right (which a small model
    gets wrong: it read 377's tens digit as 3)."""
    digits = str(n)
    named = [f"{d} {PLACES[len(digits) - 1 - i]}" for i, d in enumerate(digits)]
    return f"{n} = {', '.join(named)}"


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


def _mul_digit(x: int, d: int) -> tuple[str, int]:
    """x times one digit d, ones first, on one line (x's places are written above it)."""
    parts, carry, partial = [], 0, ""
    for i in range(len(str(x))):
        p = _digit(x, i) * d + carry
        parts.append(f"{PLACES[i]} {_digit(x, i)} x {d}" + (f" + {carry}" if carry else "") + f" = {p}")
        partial = str(p % 10) + partial
        carry = p // 10
    if carry:
        partial = str(carry) + partial
    return "; ".join(parts) + f" -> {int(partial)}", int(partial)


def arithmetic_response(op: str, a: int, b: int) -> tuple[str, int]:
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
            line, _ = _mul_digit(x, y)
            lines.append(f"{x} x {y}: {line}")
        else:
            tens, ones = divmod(y, 10)
            lines.append(f"{places(y)}, so {x} x {y} = {x} x {ones} + {x} x {tens * 10}")
            l1, p1 = _mul_digit(x, ones)
            l2, p2 = _mul_digit(x, tens)
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
        if not (op == "add" and a >= 0 and b >= 0) and not (op == "sub" and a >= b >= 0):
            lines.append(f"{head} = -({plain})" if neg else f"{head} = {plain}")
        cols, _ = (_add_columns if kind == "add" else _sub_columns)(x, y)
        lines.append(f"{plain}:")
        lines += cols
    lines.append(f"So {head} = {value}.")
    return "\n".join(lines), value


def sample_arithmetic(rng: random.Random) -> Problem:
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
    response, value = arithmetic_response(op, a, b)
    return Problem(f"{op}:{a}:{b}", {"a": a, "b": b}, "integer", str(value), response, op)


# ---------------------------------------------------------------- sorting
def insertion_lines(nums: list[int], desc: bool) -> list[str]:
    """Insertion sort as a tutor writes it: each number in turn put into the ordered list so far
    (`25 -> 25, 50`). Every step compares a number with its neighbours in a short ordered list,
    which a small model learns; picking the order of ten numbers in one go it does not (14% exact
    after 100 steps of the one-line style)."""
    ordered: list[int] = []
    lines = []
    for x in nums:
        at = next((i for i, y in enumerate(ordered) if (x > y if desc else x < y)), len(ordered))
        ordered.insert(at, x)
        lines.append(f"{x} -> {', '.join(map(str, ordered))}")
    return lines


def sample_sorting(rng: random.Random) -> Problem:
    n = rng.randint(4, 10)
    lo = rng.choice([0, 0, -50, -500])
    hi = rng.choice([20, 100, 999])
    nums = [rng.randint(lo, hi) for _ in range(n)]
    desc = rng.random() < 0.4
    answer = ", ".join(map(str, sorted(nums, reverse=desc)))
    order = "descending (largest first)" if desc else "ascending (smallest first)"
    first = "Largest" if desc else "Smallest"
    response = "\n".join(
        [f"{first} first, adding one number at a time:", *insertion_lines(nums, desc), f"So in {order} order: {answer}"]
    )
    form = "desc" if desc else "asc"
    return Problem(f"sort:{form}:{','.join(map(str, nums))}", {"nums": nums}, "integer_list", answer, response, form)


def _list_text(nums: list[int], rng: random.Random) -> str:
    style = rng.random()
    if style < 0.6:
        return ", ".join(map(str, nums))
    if style < 0.8:
        return " ".join(map(str, nums))
    return ", ".join(map(str, nums[:-1])) + " and " + str(nums[-1])


# ---------------------------------------------------------------- roman numerals


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


def sample_roman(rng: random.Random) -> Problem:
    n = rng.randint(1, 3999) if rng.random() < 0.85 else rng.randint(1, 100)
    parts, numeral = roman_parts(n), to_roman(n)
    values, syms = " + ".join(str(v) for v, _ in parts), " + ".join(s for _, s in parts)
    if rng.random() < 0.5:
        response = f"{n} = {values}\n= {syms}\nSo {n} in Roman numerals is {numeral}."
        return Problem(f"to_roman:{n}", {"n": n}, "roman", numeral, response, "to_roman")
    response = f"{numeral} = {syms}\n= {values}\nSo {numeral} is {n}."
    return Problem(f"from_roman:{n}", {"r": numeral}, "integer", str(n), response, "from_roman")


# ---------------------------------------------------------------- base conversion
HEX_DIGITS = "0123456789ABCDEF"


def sample_base_conversion(rng: random.Random) -> Problem:
    form = rng.choice(["to_bin", "from_bin", "to_hex", "from_hex"])
    if form in ("to_bin", "from_bin"):
        n = rng.randint(0, 1023)
        bits = format(n, "b")
        powers = [2**i for i in range(len(bits) - 1, -1, -1)]
        if form == "to_bin":
            steps, rest = [], n
            for p in powers:
                if rest >= p:
                    steps.append(f"{p}: 1 ({rest} - {p} = {rest - p})")
                    rest -= p
                else:
                    steps.append(f"{p}: 0")
            response = (
                f"{n} in binary, from the largest power of 2:\n" + "\n".join(steps) + f"\nSo {n} in binary is {bits}."
            )
            return Problem(f"to_bin:{n}", {"n": n}, "binary", bits, response, form)
        terms = [p for p, b in zip(powers, bits) if b == "1"]
        sums, total = [], 0
        for t in terms:
            total += t
            sums.append(str(total))
        response = (
            f"{bits} = " + " + ".join(f"{b} x {p}" for p, b in zip(powers, bits)) + "\n"
            f"= {' + '.join(map(str, terms)) or '0'}\nRunning total: {', '.join(sums) or '0'}\n"
            f"So {bits} in decimal is {n}."
        )
        return Problem(f"from_bin:{n}", {"b": bits}, "integer", str(n), response, form)
    n = rng.randint(0, 65535) if rng.random() < 0.8 else rng.randint(0, 255)
    hexs = format(n, "X")
    powers = [16**i for i in range(len(hexs) - 1, -1, -1)]
    if form == "to_hex":
        steps, rest = [], n
        for p in powers:
            d = rest // p
            steps.append(
                f"{p}: {rest} // {p} = {d} ({HEX_DIGITS[d]}), {d} x {p} = {d * p}, {rest} - {d * p} = {rest - d * p}"
            )
            rest -= d * p
        response = (
            f"{n} in hexadecimal, from the largest power of 16:\n"
            + "\n".join(steps)
            + f"\nSo {n} in hexadecimal is {hexs}."
        )
        return Problem(f"to_hex:{n}", {"n": n}, "hex", hexs, response, form)
    vals = [HEX_DIGITS.index(c) * p for c, p in zip(hexs, powers)]
    sums, total = [], 0
    for v in vals:
        total += v
        sums.append(str(total))
    shown = hexs if rng.random() < 0.7 else hexs.lower()
    response = (
        f"{hexs} = " + " + ".join(f"{HEX_DIGITS.index(c)} x {p}" for c, p in zip(hexs, powers)) + "\n"
        f"= {' + '.join(map(str, vals))}\nRunning total: {', '.join(sums)}\nSo {hexs} in decimal is {n}."
    )
    return Problem(f"from_hex:{n}", {"h": shown}, "integer", str(n), response, form)


# ---------------------------------------------------------------- number words -> numerals
ONES = (  # noqa: SIM905
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()  # noqa: SIM905


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


def sample_number_words(rng: random.Random) -> Problem:
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


GENERATORS: dict[str, tuple[Callable[[random.Random], Problem], dict[str, list[str]]]] = {
    "arithmetic": (sample_arithmetic, ARITHMETIC_TEMPLATES),
    "sorting": (sample_sorting, SORTING_TEMPLATES),
    "roman": (sample_roman, ROMAN_TEMPLATES),
    "base_conversion": (sample_base_conversion, BASE_TEMPLATES),
    "number_words": (sample_number_words, NUMBER_WORDS_TEMPLATES),
}


def render(problem: Problem, template: str, rng: random.Random) -> str:
    s = problem.slots
    if "nums" in s:
        return template.format(list=_list_text(s["nums"], rng))
    if "a" in s:
        return template.format(a=fmt(s["a"], rng), b=fmt(s["b"], rng))
    if "n" in s:
        return template.format(
            n=fmt(s["n"], rng, sep_p=0.2 if problem.form == "to_hex" else 0.0) if problem.form != "to_roman" else s["n"]
        )
    return template.format(**s)


def generate(skill: str, split: str, count: int, seed: int) -> list[dict]:
    """`count` rows of one skill in one split: {query, response, answer, task, kind, label, key}."""
    sample, templates = GENERATORS[skill]
    rng = random.Random(f"{skill}:{split}:{seed}")
    rows, seen = [], set()
    tries = 0
    while len(rows) < count:
        tries += 1
        if tries > 200 * count + 10_000:
            raise RuntimeError(f"{skill}/{split}: ran out of distinct problems after {len(rows)}")
        p = sample(rng)
        if p.key in seen or split_of(p.key) != split:
            continue
        seen.add(p.key)
        family = templates[p.form]
        usable = family[-HELD_OUT:] if split == "eval" else family[:-HELD_OUT]
        query = render(p, rng.choice(usable), rng)
        rows.append(
            {
                "query": query,
                "response": p.response,
                "answer": p.answer,
                "task": skill,
                "kind": p.kind,
                "label": skill,
                "key": p.key,
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description="Write train/pool/eval JSONL for every skill.")
    ap.add_argument("--out", type=Path, default=Path(".work/skills/data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=4000, help="training rows per skill")
    ap.add_argument("--pool", type=int, default=60, help="query-pool rows per skill")
    ap.add_argument("--eval", type=int, default=100, help="evaluation rows per skill")
    args = ap.parse_args()
    for skill in SKILLS:
        for split, n in (("train", args.train), ("pool", args.pool), ("eval", args.eval)):
            write_jsonl(args.out / split / f"{skill}.jsonl", generate(skill, split, n, args.seed))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
