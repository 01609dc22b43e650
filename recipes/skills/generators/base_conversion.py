"""Base conversion: decimal ↔ binary (0–1023) and decimal ↔ hexadecimal (0–65535), by powers and running totals."""

from __future__ import annotations

import random

from recipes.skills.generators.common import Problem

TEMPLATES: dict[str, list[str]] = {
    "to_bin": [
        "Convert {n} to binary.",
        "what is {n} in binary",
        "How do you write {n} in base 2?",
        "Could you please give me the binary for {n}?",
        "{n} in binary?",
        "Binary representation of {n}",
        "I'm learning about bits: what's {n} in binary?",
        "Please express the decimal number {n} in binary.",
        "Turn {n} into binary, please.",
        "What's {n} written in base two?",
        "decimal {n} to binary pls",
        "Show {n} as a binary number.",
    ],
    "from_bin": [
        "Convert binary {b} to decimal.",
        "what is {b} in decimal",
        "What number is the binary {b}?",
        "Could you please convert 0b{b} to decimal?",
        "binary {b} = ? in decimal",
        "Decimal value of binary {b}",
        "My register shows {b} in binary. What's that in decimal?",
        "Please turn the binary number {b} into base 10.",
        "What's 0b{b} in base ten?",
        "How much is {b} (base 2) in decimal?",
        "binary {b} to decimal pls",
        "Read the binary number {b} as a decimal.",
    ],
    "to_hex": [
        "Convert {n} to hexadecimal.",
        "what is {n} in hex",
        "How do you write {n} in base 16?",
        "Could you please give me the hex for {n}?",
        "{n} in hex?",
        "Hexadecimal representation of {n}",
        "I need a color channel value: what's {n} in hex?",
        "Please express the decimal number {n} in hexadecimal.",
        "Turn {n} into hex, please.",
        "What's {n} written in base sixteen?",
        "decimal {n} to hex pls",
        "Show {n} as a hexadecimal number.",
    ],
    "from_hex": [
        "Convert hex {h} to decimal.",
        "what is 0x{h} in decimal",
        "What number is the hexadecimal {h}?",
        "Could you please convert 0x{h} to decimal?",
        "hex {h} = ? in decimal",
        "Decimal value of hex {h}",
        "A debugger shows 0x{h}. What's that in decimal?",
        "Please turn the hexadecimal number {h} into base 10.",
        "What's 0x{h} in base ten?",
        "How much is {h} (base 16) in decimal?",
        "hex {h} to decimal pls",
        "Read the hex number {h} as a decimal.",
    ],
}


HEX_DIGITS = "0123456789ABCDEF"


def sample(rng: random.Random) -> Problem:
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
