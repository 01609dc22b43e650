"""The answer-extraction rules of `etr-hub eval tasks`, table-driven: variants that count, near-misses that don't."""

from __future__ import annotations

import pytest

from etr_hub.eval.answers import extract, gold_value, infer_kind, is_correct, roman_value, words_value

W48213 = "forty-eight thousand two hundred thirteen"
CASES = [
    # (kind, reply, gold, counts?)
    ("integer", "So 4821 - 377 = 4444.", "4444", True),
    ("integer", "The answer is 4,444", "4444", True),
    ("integer", "4821 − 377 = **4444**", "4444", True),
    ("integer", "The result is -1,234.", "-1234", True),
    ("integer", "The result is −1234", "-1234", True),
    ("integer", "5198 is the answer, a four digit number", "5198", True),
    ("integer", "The answer is 5198. Note that 6 x 7 is also 42", "5198", False),  # the last marker wins: documented
    ("integer", "The answer is 44.5", "44", False),  # a decimal is not the integer 44
    ("integer", "The answer is 4445", "4444", False),
    ("integer", "To add numbers, line up the columns and carry.", "12", False),  # no number at all
    ("integer", "= 1234567", "1234", False),
    ("integer", "4821-377=4444", "4444", True),
    ("integer", "So MCMXC is 1990.", "1990", True),
    ("integer_list", "In ascending order: -3, 5, 12", "-3, 5, 12", True),
    ("integer_list", "Sorted: [-3, 5, 12].", "-3, 5, 12", True),
    ("integer_list", "The numbers 12, 5, -3 sorted are -3; 5; 12", "-3, 5, 12", True),
    ("integer_list", "sorted: -3 5 12", "-3, 5, 12", True),
    ("integer_list", "-3, 5 and 12", "-3, 5, 12", True),
    ("integer_list", "In ascending order: -3, 12, 5", "-3, 5, 12", False),  # order matters
    ("integer_list", "In ascending order: -3, 5", "-3, 5, 12", False),  # one missing
    ("integer_list", "In ascending order: -3, 5, 12, 12", "-3, 5, 12", False),
    ("roman", "So 1990 in Roman numerals is MCMXC.", "MCMXC", True),
    ("roman", "MCMXC", "MCMXC", True),
    ("roman", "The answer is **MCMXC**. I hope this helps!", "MCMXC", True),
    ("roman", "1990 is MCMLXXXX", "MCMXC", False),  # not canonical
    ("roman", "1990 is mcmxc", "MCMXC", False),  # Roman numerals in capitals
    ("roman", "It is MCMXCI", "MCMXC", False),
    ("roman", "I think it's IV", "IV", True),
    ("binary", "So 45 in binary is 101101.", "101101", True),
    ("binary", "45 = 0b101101", "101101", True),
    ("binary", "45 in binary is 0101101", "101101", True),  # leading zero: same value
    ("binary", "45 in binary is 101100", "101101", False),
    ("binary", "45 in binary is 1011012", "101101", False),
    ("hex", "So 47 in hexadecimal is 2F.", "2F", True),
    ("hex", "47 = 0x2f", "2F", True),
    ("hex", "47 in hex is 2f", "2F", True),
    ("hex", "255 in hex is ff", "FF", True),
    ("hex", "The hex value is FF", "FF", True),
    ("hex", "47 in hex is 2E", "2F", False),
    ("hex", "I would add a face here", "FACE", False),  # lower-case words are not hex
    ("words", "So 48213 in words is forty-eight thousand two hundred thirteen.", W48213, True),
    ("words", "48,213 is Forty Eight Thousand, Two Hundred and Thirteen", W48213, True),
    ("words", "You would write: **nine thousand eighteen**.", "nine thousand eighteen", True),
    ("words", "In words: zero", "zero", True),
    ("words", "18 = eighteen\nSo 9018 in words is nine thousand eighteen dollars", "nine thousand eighteen", True),
    ("words", "So 9018 in words is nine thousand eighty.", "nine thousand eighteen", False),
    ("words", "48213 in words is 48,213.", W48213, False),  # digits are no words
    ("words", "It is two hundred hundred", "two hundred", False),  # no well-formed number
    ("words", "The answer is one, two", "one", False),
    ("words", "It is forty-eight thousand", W48213, False),  # one group missing
]


@pytest.mark.parametrize("kind,reply,gold,counts", CASES)
def test_extraction_rule(kind, reply, gold, counts):
    assert is_correct(reply, gold, kind) is counts


@pytest.mark.parametrize(
    "answer,kind",
    [
        ("-1234", "integer"),
        ("-3, 5, 12", "integer_list"),
        ("MCMXC", "roman"),
        ("2F", "hex"),
        ("101101", "integer"),
        ("7", "integer"),
        ("forty-eight thousand, two hundred", "words"),
    ],
)
def test_kind_is_inferred_from_the_gold_answer(answer, kind):
    assert infer_kind(answer) == kind


@pytest.mark.parametrize(
    "answer,kind",
    [
        ("", "integer"),
        ("12.5", "integer"),
        ("3,5", "integer_list"),
        ("IIII", "roman"),
        ("2f", "hex"),
        ("0b101", "binary"),
        ("12", "words"),
        ("Twelve", "words"),  # gold words are lower case
        ("twelve hundred", "words"),
    ],
)
def test_invalid_gold_answers_are_refused(answer, kind):
    with pytest.raises(ValueError):
        gold_value(answer, kind)


def test_roman_values_round_trip():
    from etr_hub.eval.answers import to_roman

    assert all(roman_value(to_roman(n)) == n for n in range(1, 4000))
    assert roman_value("MMMM") is None and roman_value("IC") is None and roman_value("") is None


def test_no_candidate_is_no_answer():
    assert extract("I cannot help with that.", "integer") is None
    assert extract("", "roman") is None


def test_words_values_round_trip():
    from recipes.skills.generators.number_to_words import canonical_words

    assert all(words_value(canonical_words(n)) == n for n in range(0, 1_000_000, 7))
    assert words_value("and five") is None and words_value("one thousand thousand") is None
