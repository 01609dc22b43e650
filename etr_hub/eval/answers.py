"""Reading the answer out of a model's reply, one documented rule per answer kind.

The rule, for every kind: find the kind's candidates in the reply (below); if the reply has a
final-answer marker ("answer is", "answer:", "result is", "=", " is "), the answer is the first
candidate after the last marker; otherwise, or when nothing follows the last marker, it is the
last candidate in the reply. A reply with no candidate has no answer (it counts as wrong).

Candidates, tolerant of how people and models write them, strict about the value:
- integer: digits with an optional attached minus (`-`, `−`), thousands separators allowed
  (`4,444`); a decimal like `12.5` is not an integer; a trailing period or `**bold**` is fine.
- integer_list: two or more integers separated by commas, semicolons, spaces or "and",
  optionally in brackets; compared element by element, in order.
- roman: an upper-case Roman numeral in canonical form (`MCMXC`, not `MCMLXXXX`); a lone `I`
  followed by a lower-case word ("I think") is the pronoun, not a numeral.
- binary: 0s and 1s with an optional `0b` prefix; compared by value (leading zeros allowed).
- hex: hex digits with an optional `0x` prefix, either case, compared by value; a word of
  letters only counts when it is upper case (`FF`), prefixed, or the first word after a marker.
- words: a number from 0 to 999,999 in English words, compared by value: hyphens or spaces
  (`forty-eight`, `forty eight`), any case, a comma after `thousand`, a British `and` after
  `hundred` or `thousand`. A run of number words that is no well-formed number (`two hundred
  hundred`, `one, two`) is no candidate; digits are no answer of this kind.
"""

from __future__ import annotations

import re

KINDS = ("integer", "integer_list", "roman", "binary", "hex", "words")

_MARKER = re.compile(r"(?:answer|result)\s*(?:is|:)|=|\bis\b", re.IGNORECASE)
_INT = r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)"
_INTEGER = re.compile(rf"(?<![\w.,-]){_INT}(?!\d|[.,]\d)")
_LIST = re.compile(rf"(?<![\w.-]){_INT}(?:(?:\s*[,;]\s*|\s+and\s+|\s+){_INT})+(?![\w]|[.,]\d)")
_ROMAN_WORD = re.compile(r"(?<![\w])[IVXLCDM]+(?![\w])")
_BINARY = re.compile(r"(?<![\w])(?:0[bB])?[01]+(?![\w])")
_HEX = re.compile(r"(?<![\w])(?:0[xX])?[0-9A-Fa-f]+(?![\w])")
ONES = (  # noqa: SIM905
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()  # noqa: SIM905
_WORD = "(?:" + "|".join([*ONES, *TENS[2:], "hundred", "thousand"]) + ")"
_WORDS = re.compile(rf"(?<![\w-]){_WORD}(?:(?:[ \t-]+|,[ \t]*|[ \t]+and[ \t]+){_WORD})*(?![\w-])", re.IGNORECASE)
ROMAN_VALUES = [
    (1000, "M"),
    (900, "CM"),
    (500, "D"),
    (400, "CD"),
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
]


def to_roman(n: int) -> str:
    out = []
    for value, symbol in ROMAN_VALUES:
        count, n = divmod(n, value)
        out.append(symbol * count)
    return "".join(out)


def roman_value(text: str) -> int | None:
    """The value of a canonical Roman numeral (1–3999), else None."""
    total, i = 0, 0
    for value, symbol in ROMAN_VALUES:
        while text.startswith(symbol, i):
            total, i = total + value, i + len(symbol)
    return total if i == len(text) and 0 < total < 4000 and to_roman(total) == text else None


def _group_value(words: list[str]) -> int | None:
    """1-999 from its words (`two hundred thirteen`), else None."""
    value = 0
    if len(words) >= 2 and words[1] == "hundred" and words[0] in ONES[1:10]:
        value, words = 100 * ONES.index(words[0]), words[2:]
    if words and words[0] in TENS[2:]:
        value, words = value + 10 * TENS.index(words[0]), words[1:]
        if words and words[0] in ONES[1:10]:
            value, words = value + ONES.index(words[0]), words[1:]
    elif words and words[0] in ONES[1:]:
        value, words = value + ONES.index(words[0]), words[1:]
    return value if value and not words else None


def words_value(text: str) -> int | None:
    """The value of a number written in words (0-999,999), else None: the `words` kind's rule."""
    words = re.findall(r"[a-z]+", text.lower())
    if any(w == "and" and (i == 0 or words[i - 1] not in ("hundred", "thousand")) for i, w in enumerate(words)):
        return None  # a British `and` follows `hundred` or `thousand`, nothing else
    words = [w for w in words if w != "and"]
    if words == ["zero"]:
        return 0
    if words.count("thousand") > 1:
        return None
    if "thousand" not in words:
        return _group_value(words)
    at = words.index("thousand")
    high, low = _group_value(words[:at]), _group_value(words[at + 1 :]) if words[at + 1 :] else 0
    return None if high is None or low is None else high * 1000 + low


def _int(text: str) -> int:
    return int(text.replace("−", "-").replace(",", ""))


def _list(text: str) -> tuple[int, ...]:
    return tuple(_int(m.group()) for m in re.finditer(_INT, text))


def _candidates(reply: str, kind: str) -> list[tuple[int, int, object]]:
    """(start, end, value) of every candidate of `kind` in the reply, in order."""
    found: list[tuple[int, int, object]] = []
    if kind == "integer":
        found = [(m.start(), m.end(), _int(m.group())) for m in _INTEGER.finditer(reply)]
    elif kind == "integer_list":
        found = [(m.start(), m.end(), _list(m.group())) for m in _LIST.finditer(reply)]
    elif kind == "roman":
        for m in _ROMAN_WORD.finditer(reply):
            if m.group() == "I" and re.match(r"\s+[a-z']", reply[m.end() :]):
                continue  # the pronoun
            value = roman_value(m.group())
            if value is not None:
                found.append((m.start(), m.end(), value))
    elif kind == "binary":
        found = [(m.start(), m.end(), int(m.group().lower().removeprefix("0b"), 2)) for m in _BINARY.finditer(reply)]
    elif kind == "hex":
        for m in _HEX.finditer(reply):
            word = m.group()
            prefixed = word.lower().startswith("0x")
            digits = word[2:] if prefixed else word
            if not digits:
                continue
            if prefixed or any(c.isdigit() for c in digits) or digits.isupper():
                if digits == "A" and re.match(r"\s+[a-z]", reply[m.end() :]):
                    continue  # the article
                found.append((m.start(), m.end(), int(digits, 16)))
    elif kind == "words":
        found = [(m.start(), m.end(), v) for m in _WORDS.finditer(reply) if (v := words_value(m.group())) is not None]
    else:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    return found


def extract(reply: str, kind: str) -> object | None:
    """The answer in `reply` by the module's rule (a value comparable with `gold_value`), or None."""
    found = _candidates(reply, kind)
    markers = list(_MARKER.finditer(reply))
    if markers:
        after = markers[-1].end()
        if kind == "hex":  # "… is ff": the first word after the marker may be letters only
            word = re.match(r"\s*\**\s*((?:0[xX])?[0-9A-Fa-f]+)(?![\w])", reply[after:])
            if word:
                return int(word.group(1).lower().removeprefix("0x"), 16)
        following = [c for c in found if c[0] >= after]
        if following:
            return following[0][2]
    return found[-1][2] if found else None


def gold_value(answer: str, kind: str) -> object:
    """The gold answer's value; ValueError naming the expected format when it is not one."""
    text = answer.strip()
    if kind == "integer" and re.fullmatch(r"-?\d+", text):
        return int(text)
    if kind == "integer_list" and re.fullmatch(r"-?\d+(?:, -?\d+)+", text):
        return _list(text)
    if kind == "roman" and roman_value(text) is not None:
        return roman_value(text)
    if kind == "binary" and re.fullmatch(r"[01]+", text):
        return int(text, 2)
    if kind == "hex" and re.fullmatch(r"[0-9A-F]+", text):
        return int(text, 16)
    if kind == "words" and re.fullmatch(r"[a-z ,-]+", text) and words_value(text) is not None:
        return words_value(text)
    formats = {
        "integer": "digits with an optional minus, e.g. -1234",
        "integer_list": "integers joined by ', ', e.g. -3, 5, 12",
        "roman": "a canonical Roman numeral in capitals, e.g. MCMXC",
        "binary": "0s and 1s, e.g. 101101",
        "hex": "hex digits in capitals, no prefix, e.g. 2F",
        "words": "a number from zero to 999,999 in lower-case English words, e.g. forty-eight thousand two hundred",
    }
    if kind not in formats:
        raise ValueError(f"unknown answer kind {kind!r} (expected one of {', '.join(KINDS)})")
    raise ValueError(f"answer {answer!r} is not a {kind} ({formats[kind]})")


def infer_kind(answer: str) -> str:
    """The kind of a gold answer that names none: words, list, Roman, hex (has A–F), else integer."""
    text = answer.strip()
    if re.fullmatch(r"[a-z ,-]+", text) and words_value(text) is not None:
        return "words"
    if "," in text:
        return "integer_list"
    if re.fullmatch(r"[IVXLCDM]+", text):
        return "roman"
    if re.fullmatch(r"[0-9A-F]*[A-F][0-9A-F]*", text):
        return "hex"
    return "integer"


def is_correct(reply: str, answer: str, kind: str) -> bool:
    got = extract(reply, kind)
    return got is not None and got == gold_value(answer, kind)
