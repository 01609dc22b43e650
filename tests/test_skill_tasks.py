"""The skill-question generator (recipes/skills/tasks.py, generators/): deterministic by seed, disjoint splits,
many phrasings, and worked answers whose stated result is the gold answer under the eval's rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from etr_hub.eval.answers import gold_value, is_correct
from recipes.skills.generators.arithmetic import arithmetic_response
from recipes.skills.generators.common import places
from recipes.skills.generators.number_to_words import canonical_words
from recipes.skills.generators.number_words import group_words
from recipes.skills.generators.sorting import insertion_lines
from recipes.skills.tasks import GENERATORS, GREETINGS, HELD_OUT, LEAD_INS, SKILLS, generate, split_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("skill", SKILLS)
def test_same_seed_same_rows_other_seed_other_rows(skill):
    assert generate(skill, "train", 50, seed=0) == generate(skill, "train", 50, seed=0)
    assert generate(skill, "train", 50, seed=0) != generate(skill, "train", 50, seed=1)


@pytest.mark.parametrize("skill", SKILLS)
def test_splits_are_disjoint_by_problem_and_eval_uses_held_out_phrasings(skill):
    rows = {split: generate(skill, split, n, seed=0) for split, n in (("train", 400), ("pool", 60), ("eval", 60))}
    keys = {split: {r["key"] for r in rs} for split, rs in rows.items()}
    assert not keys["train"] & keys["pool"] and not keys["train"] & keys["eval"] and not keys["pool"] & keys["eval"]
    assert all(split_of(r["key"]) == split for split, rs in rows.items() for r in rs)
    # another seed draws other problems, never across splits
    other = {r["key"] for r in generate(skill, "eval", 60, seed=7)}
    assert not other & keys["train"] and not other & keys["pool"]
    _, templates = GENERATORS[skill]
    assert all(len(family) >= 8 for family in templates.values())
    train_phrasings = {r["query"] for r in rows["train"]}
    assert len(train_phrasings) == len(rows["train"])


@pytest.mark.parametrize("skill", SKILLS)
def test_every_worked_answer_states_its_gold_result(skill):
    for r in generate(skill, "train", 300, seed=3):
        gold_value(r["answer"], r["kind"])  # gold in its documented format
        assert is_correct(r["response"], r["answer"], r["kind"]), r


def test_arithmetic_values_are_right():
    for r in generate("arithmetic", "train", 300, seed=5):
        op, a, b = r["key"].split(":")
        a, b = int(a), int(b)
        assert int(r["answer"]) == {"add": a + b, "sub": a - b, "mul": a * b}[op]
        assert abs(a) < 10_000 and abs(b) < 10_000 and (op != "mul" or (abs(a) < 1000 and abs(b) < 100))


def test_focus_sampler_draws_only_its_kind_and_keeps_the_split():
    rows = generate("arithmetic", "train", 200, seed=3, focus="unequal_lengths")
    assert rows != generate("arithmetic", "train", 200, seed=3)
    for r in rows:
        op, a, b = r["key"].split(":")
        assert op in ("add", "sub") and len(a) != len(b) and split_of(r["key"]) == "train"
        assert int(r["answer"]) == (int(a) + int(b) if op == "add" else int(a) - int(b))
        assert is_correct(r["response"], r["answer"], r["kind"])
    assert {r["key"] for r in generate("arithmetic", "eval", 40, seed=3, focus="unequal_lengths")}.isdisjoint(
        r["key"] for r in rows
    )


def test_products_focus_draws_two_or_three_digit_by_two_digit_products_with_right_worked_answers():
    rows = generate("arithmetic", "train", 200, seed=3, focus="products")
    for r in rows:
        op, a, b = r["key"].split(":")
        assert op == "mul" and 10 <= int(a) <= 999 and 10 <= int(b) <= 99 and split_of(r["key"]) == "train"
        assert int(r["answer"]) == int(a) * int(b) and is_correct(r["response"], r["answer"], r["kind"])
    assert sum(len(r["key"].split(":")[1]) == 3 for r in rows) > 120  # mostly 3-digit by 2-digit


@pytest.mark.parametrize(
    "carry_apart, line",
    [
        (True, "525 x 8: ones 5 x 8 = 40; tens 2 x 8 = 16, 16 + 4 = 20; hundreds 5 x 8 = 40, 40 + 2 = 42 -> 4200"),
        (False, "525 x 8: ones 5 x 8 = 40; tens 2 x 8 + 4 = 20; hundreds 5 x 8 + 2 = 42 -> 4200"),
    ],
)
def test_a_partial_product_adds_each_carry_after_the_places_product_or_fused_into_it(carry_apart, line):
    response, value = arithmetic_response("mul", 525, 28, carry_apart)
    assert line in response.splitlines() and value == 14700 and response.endswith("So 525 x 28 = 14700.")
    # a place with no carry is one product either way
    assert "525 x 2: ones 5 x 2 = 10; tens 2 x 2" in response


def test_another_style_answers_the_same_problems_and_changes_only_products_with_a_carry():
    from recipes.skills.generators import STYLE_NOTES, STYLES

    rows = generate("arithmetic", "train", 120, seed=2)
    apart = generate("arithmetic", "train", 120, seed=2, style="carry_apart")
    assert [(r["key"], r["query"], r["answer"]) for r in rows] == [(r["key"], r["query"], r["answer"]) for r in apart]
    for r, c in zip(rows, apart):
        written_apart = re.search(r"= (\d+), \1 \+ \d = ", c["response"])  # `6 x 8 = 48, 48 + 3 = 51`
        assert (r["response"] != c["response"]) == bool(written_apart) and (not written_apart or r["key"][:4] == "mul:")
        assert not re.search(r"= (\d+), \1 \+ ", r["response"]) and is_correct(c["response"], c["answer"], c["kind"])
    assert sum(r["response"] != c["response"] for r, c in zip(rows, apart)) > 20
    assert {name for styles in STYLES.values() for name in styles} <= set(STYLE_NOTES)  # the model card says each


@pytest.mark.parametrize(
    "x, y, line",
    [
        (7615, 7290, "thousands 7 = 7, hundreds 6 > 2, so 7615 > 7290"),
        (6615, 7022, "thousands 6 < 7, so 6615 < 7022"),
        (1984, 998, "thousands 1 > 0, so 1984 > 998"),  # a missing place reads as 0: no digits counted
        (5, 12, "tens 0 < 1, so 5 < 12"),
        (77, 77, "tens 7 = 7, ones 7 = 7, so 77 = 77"),
        (5655, 5658, "thousands 5 = 5, hundreds 6 = 6, tens 5 = 5, ones 5 < 8, so 5655 < 5658"),
    ],
)
def test_a_comparison_reads_both_numbers_by_place_and_decides_at_the_first_place_that_differs(x, y, line):
    from recipes.skills.generators.arithmetic import comparison

    assert comparison(x, y) == [places(x), places(y), line]


@pytest.mark.parametrize(
    "op, a, b, head",
    [
        (
            "sub",
            7615,
            7290,
            ["7615 - 7290:", places(7615), places(7290), "thousands 7 = 7, hundreds 6 > 2, so 7615 > 7290"],
        ),
        (
            "sub",
            6615,
            7022,
            [
                "6615 - 7022:",
                places(6615),
                places(7022),
                "thousands 6 < 7, so 6615 < 7022",
                "6615 - 7022 = -(7022 - 6615)",
            ],
        ),
        ("add", -12, 5, ["-12 + 5:", places(5), places(12), "tens 0 < 1, so 5 < 12", "-12 + 5 = -(12 - 5)"]),
        ("add", 6070, -351, ["6070 + -351:", places(6070), places(351), "thousands 6 > 0, so 6070 > 351"]),
    ],
)
def test_the_compared_style_states_the_question_then_compares_then_decides_the_sign(op, a, b, head):
    plain, value = arithmetic_response(op, a, b, carry_apart=True)
    compared, same = arithmetic_response(op, a, b, carry_apart=True, compare=True)
    assert compared.splitlines()[: len(head)] == head and same == value
    assert compared.splitlines()[-5:] == plain.splitlines()[-5:]  # the same columns and result
    assert compared.count(places(max(abs(a), abs(b)))) == (2 if value < 0 else 1)  # places again only when swapped


def test_the_compared_style_changes_only_differences():
    plain = generate("arithmetic", "train", 300, seed=2, style="carry_apart")
    compared = generate("arithmetic", "train", 300, seed=2, style="compared")
    assert [(r["key"], r["query"]) for r in plain] == [(r["key"], r["query"]) for r in compared]
    changed = 0
    for p, c in zip(plain, compared):
        sign = re.search(r", so \d+ ([<>=]) \d+$", c["response"], re.M)
        assert (p["response"] != c["response"]) == bool(sign) and is_correct(c["response"], c["answer"], c["kind"])
        if sign:  # a difference of magnitudes; its result is negative exactly when the positive part is smaller
            changed += 1
            assert (int(c["answer"]) < 0) == (sign.group(1) == "<") and not c["key"].startswith("mul:")
    assert changed > 40


def test_signs_focus_draws_differences_of_close_numbers_in_either_order():
    rows = generate("arithmetic", "train", 400, seed=6, focus="signs", style="compared")
    pairs = [tuple(int(v) for v in r["key"].split(":")[1:]) for r in rows]
    close = [(a, b) for a, b in pairs if len(str(abs(a))) == len(str(abs(b))) > 1 and str(abs(a))[0] == str(abs(b))[0]]
    assert len(close) > 100 and sum(a < b for a, b in pairs) > 120 and sum(a > b for a, b in pairs) > 120
    assert all(is_correct(r["response"], r["answer"], r["kind"]) for r in rows)
    assert sum(r["key"].startswith("sub:") for r in rows) > 320


@pytest.mark.parametrize("first", [1, 2])
def test_product_shapes_focus_draws_every_shape_the_skill_covers(first):
    rows = generate("arithmetic", "train", 300, seed=4, focus="product_shapes")
    shapes = {tuple(len(x.lstrip("-")) for x in r["key"].split(":")[1:]) for r in rows}
    assert {(1, 2), (2, 1), (2, 2), (3, 1), (3, 2)} == shapes and all(r["key"].startswith("mul:") for r in rows)
    assert sum(len(r["key"].split(":")[1].lstrip("-")) == first for r in rows) > 40
    assert all(int(r["answer"]) == int(r["key"].split(":")[1]) * int(r["key"].split(":")[2]) for r in rows)


def test_every_form_focus_draws_unequal_sums_and_differences_and_products_of_every_shape_alike():
    rows = generate("arithmetic", "train", 400, seed=5, focus="every_form")
    ops = [r["key"].split(":")[0] for r in rows]
    assert 150 < ops.count("mul") < 250 and {"add", "sub"} <= set(ops)
    for r in rows:
        op, a, b = r["key"].split(":")
        assert op == "mul" or len(a.lstrip("-")) != len(b.lstrip("-"))
        assert is_correct(r["response"], r["answer"], r["kind"])


def test_wrapped_queries_pad_the_training_phrasings_and_keep_problems_and_answers():
    plain = generate("number_to_words", "train", 200, seed=1)
    wrapped = generate("number_to_words", "train", 200, seed=1, wrapped=True)
    assert wrapped == generate("number_to_words", "train", 200, seed=1, wrapped=True) and wrapped != plain
    _, templates = GENERATORS["number_to_words"]
    held_out = [t.split("{n}") for t in templates["to_words"][-HELD_OUT:]]
    for r in wrapped:
        assert split_of(r["key"]) == "train" and is_correct(r["response"], r["answer"], r["kind"])
        first_word = r["query"].split(" ", 1)[0].strip("!,.").lower()
        assert r["query"].startswith(LEAD_INS) or first_word in GREETINGS
        n = r["key"].split(":")[1]
        assert n in r["query"].replace(",", "")  # the number as asked, whatever the padding
        # never a held-out phrasing: padding goes around a training phrasing, not in place of one
        assert not any(r["query"].lower().endswith(tail.lower()) and head in r["query"] for head, tail in held_out)


def test_composed_queries_ask_for_the_same_problems_in_wordings_the_eval_never_uses():
    rows = generate("number_to_words", "train", 300, seed=1, composed=True)
    assert rows == generate("number_to_words", "train", 300, seed=1, composed=True)
    assert rows != generate("number_to_words", "train", 300, seed=1, wrapped=True)
    _, templates = GENERATORS["number_to_words"]
    held_out = " ".join(templates["to_words"][-HELD_OUT:]).lower()
    assert len({r["query"].replace(r["key"].split(":")[1], "N") for r in rows}) > 150  # many shapes, not a few
    for r in rows:
        assert split_of(r["key"]) == "train" and is_correct(r["response"], r["answer"], r["kind"])
        assert r["key"].split(":")[1] in r["query"].replace(",", "")
        # the held-out phrasings' own words never appear, so the eval still measures unseen wording
        assert not any(w in r["query"].lower() for w in ("type", "express", "as words", "written in words"))
        assert "type" in held_out and "express" in held_out
    with pytest.raises(ValueError, match="held-out"):
        generate("number_to_words", "eval", 10, seed=1, composed=True)


def test_typed_phrasings_ask_half_their_imperatives_with_a_typing_verb_and_are_otherwise_composed():
    from recipes.skills.generators.number_to_words import TYPING

    rows = generate("number_to_words", "train", 300, seed=1, composed=True, typed=True)
    assert rows == generate("number_to_words", "train", 300, seed=1, composed=True, typed=True)
    assert [r["key"] for r in rows] != [r["key"] for r in generate("number_to_words", "train", 300, 1, composed=True)]
    typed = [r for r in rows if any(f"{verb} " in r["query"].lower() for verb in TYPING)]
    assert 40 < len(typed) < 150  # about 0.6 (imperatives) x 0.5
    for r in rows:
        assert split_of(r["key"]) == "train" and r["key"].split(":")[1] in r["query"].replace(",", "")
        assert not any(w in r["query"].lower() for w in ("express", "as words", "written in words"))
    with pytest.raises(ValueError, match="composed=True"):
        generate("number_to_words", "train", 10, seed=1, typed=True)
    with pytest.raises(ValueError, match="held-out"):
        generate("number_to_words", "eval", 10, seed=1, composed=True, typed=True)


def _shape(query: str, a: str, b: str) -> str:
    """A query with its operands put back as <a> and <b>, lower case, as typed without separators."""
    text = query.replace(",", "").lower()
    for n, slot in ((a, "<a>"), (b, "<b>")):
        text = re.sub(rf"(?<![\d-]){re.escape(n)}(?!\d)", slot, text, count=1)
    return text


def test_arithmetic_word_problems_ask_the_same_problem_and_only_count_what_can_be_counted():
    from recipes.skills.generators.arithmetic import STORIES, TEMPLATES

    def lowered(templates):
        return [t.format(a="<a>", b="<b>").lower().rstrip("?.!") for t in templates]

    for stories in STORIES.values():
        assert len(stories) >= 7 and all(t.count("{a}") == t.count("{b}") == 1 for t in stories)
    rows = generate("arithmetic", "train", 600, seed=2, composed=True, style="carry_apart")
    assert rows == generate("arithmetic", "train", 600, seed=2, composed=True, style="carry_apart")
    held_out = [h for family in TEMPLATES.values() for h in lowered(family[-HELD_OUT:])]
    told = {form: 0 for form in STORIES}
    for r in rows:
        op, a, b = r["key"].split(":")
        assert split_of(r["key"]) == "train" and is_correct(r["response"], r["answer"], r["kind"])
        assert a in r["query"].replace(",", "") and b in r["query"].replace(",", "")
        shape = _shape(r["query"], a, b)
        assert not any(h in shape or h.replace("'", "") in shape for h in held_out)  # eval wording stays unseen
        if a == b:
            continue  # which slot is which can't be told from the text
        for form, stories in STORIES.items():
            if any(story in shape for story in lowered(stories)):
                told[form] += 1
                assert int(a) >= 0 and int(b) >= 0  # stories count things
                # a difference below zero only in a story that can go negative (a balance, a temperature)
                if op == "sub":
                    assert form == "sub_signed" or (form == "sub" and int(a) >= int(b))
                else:
                    assert form == op
    assert 250 < sum(told.values()) < 450 and min(told.values()) > 5, told  # two in three of the non-negative ones


def test_sorting_and_conversions_are_right():
    for r in generate("sorting", "train", 200, seed=5):
        nums = [int(x) for x in r["key"].split(":")[2].split(",")]
        assert 4 <= len(nums) <= 10
        assert r["answer"] == ", ".join(map(str, sorted(nums, reverse=r["key"].startswith("sort:desc"))))
    for r in generate("base_conversion", "train", 200, seed=5):
        form, n = r["key"].split(":")
        expected = {"to_bin": format(int(n), "b"), "to_hex": format(int(n), "X")}.get(form, n)
        assert r["answer"] == expected


@pytest.mark.parametrize(
    "n,text",
    [
        (7, "7 = 7 ones"),
        (377, "377 = 3 hundreds, 7 tens, 7 ones"),
        (22140, "22140 = 2 ten-thousands, 2 thousands, 1 hundreds, 4 tens, 0 ones"),
    ],
)
def test_numbers_are_written_by_place(n, text):
    assert places(n) == text


def test_each_column_names_its_place_and_reads_the_right_digits():
    lines = arithmetic_response("sub", 4821, 377)[0].splitlines()
    assert lines[3:7] == [
        "ones: 1 - 7: borrow, 11 - 7 = 4 -> 4",
        "tens: 2 - 1 - 7: borrow, 11 - 7 = 4 -> 44",
        "hundreds: 8 - 1 - 3 = 4 -> 444",
        "thousands: 4 - 0 = 4 -> 4444",
    ]


@pytest.mark.parametrize(
    "nums,desc,last",
    [
        ([50, 25, 2, 70], False, "70 -> 2, 25, 50, 70"),
        ([50, 25, 2, 70], True, "70 -> 70, 50, 25, 2"),
        ([3, -3, 3, 0], False, "0 -> -3, 0, 3, 3"),
    ],
)
def test_insertion_lines_keep_the_list_ordered(nums, desc, last):
    lines = insertion_lines(nums, desc)
    assert len(lines) == len(nums) and lines[-1] == last
    assert lines[0] == f"{nums[0]} -> {nums[0]}"


@pytest.mark.parametrize(
    "n,hyphen,british_and,words",
    [
        (7, "-", False, "seven"),
        (15, "-", False, "fifteen"),
        (40, "-", False, "forty"),
        (21, "-", False, "twenty-one"),
        (99, " ", False, "ninety nine"),
        (100, "-", True, "one hundred"),
        (305, "-", True, "three hundred and five"),
        (305, "-", False, "three hundred five"),
        (870, "-", False, "eight hundred seventy"),
        (999, "-", True, "nine hundred and ninety-nine"),
    ],
)
def test_number_words_groups(n, hyphen, british_and, words):
    assert group_words(n, {"hyphen": hyphen, "and": british_and}) == words


def _read_words(text: str) -> int:
    """An independent reader of English number words (the test's own, not the generator's)."""
    small = {
        w: i
        for i, w in enumerate(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
        )
    }
    small |= {"thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18}
    small |= {"nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70}
    small |= {"eighty": 80, "ninety": 90}
    total = group = 0
    for word in text.lower().replace("-", " ").replace(",", " ").split():
        if word == "and":
            continue
        if word == "hundred":
            group *= 100
        elif word == "thousand":
            total, group = total + group * 1000, 0
        else:
            group += small[word]
    return total + group


def test_number_words_say_their_answer():
    rows = generate("number_words", "train", 400, seed=5)
    for r in rows:
        words = r["response"].rsplit("\nSo ", 1)[1].rsplit(" is ", 1)[0]
        assert words in r["query"]  # the reply names the number as the question wrote it
        assert _read_words(words) == int(r["answer"]) == int(r["key"].split(":")[1])
        assert 0 <= int(r["answer"]) <= 999_999 and not any(c.isdigit() for c in r["query"])
    assert {len(r["answer"]) for r in rows} >= {2, 3, 4, 5, 6}
    assert any(" and " in r["query"] for r in rows) and any("-" in r["query"] for r in rows)


@pytest.mark.parametrize(
    "n,words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (305, "three hundred five"),
        (9018, "nine thousand eighteen"),
        (48000, "forty-eight thousand"),
        (48213, "forty-eight thousand two hundred thirteen"),
        (999999, "nine hundred ninety-nine thousand nine hundred ninety-nine"),
    ],
)
def test_numbers_in_words_as_a_cheque_writes_them(n, words):
    assert canonical_words(n) == words


def test_number_to_words_replies_find_the_thousands_by_place_and_say_the_answer():
    rows = generate("number_to_words", "train", 400, seed=5)
    for r in rows:
        n = int(r["key"].split(":")[1])
        assert _read_words(r["answer"]) == n and 0 <= n <= 999_999  # the test's own reader, not the generator's
        assert r["response"].endswith(f"\nSo {n} in words is {r['answer']}.")
        assert f"{n:,}" in r["query"] or str(n) in r["query"]
        if n >= 1000:  # the thousands group is read off the number written by place
            assert r["response"].splitlines()[:2] == [
                places(n),
                f"= {n // 1000} thousand" + (f" + {n % 1000}" if n % 1000 else ""),
            ]
    assert {len(str(int(r["key"].split(":")[1]))) for r in rows} >= {2, 3, 4, 5, 6}
    big = [(int(r["key"].split(":")[1]), r["query"]) for r in rows if int(r["key"].split(":")[1]) >= 1000]
    assert any(f"{n:,}" in q for n, q in big) and any(f"{n:,}" not in q for n, q in big)  # separators, sometimes


# the blind set was written by someone who never saw the templates: 3 of its 40 match one (`Convert {n} to words.`)
@pytest.mark.parametrize("phrasings, shared", [("number_to_words.txt", 0), ("number_to_words_blind.txt", 3)])
def test_rephrase_reasks_the_same_problems_in_new_wordings(phrasings, shared):
    from recipes.skills.probe import rephrase

    rows = generate("number_to_words", "eval", 12, seed=0)
    templates = (ROOT / "recipes" / "skills" / "phrasings" / phrasings).read_text().splitlines()
    assert all(t.count("{n}") == 1 and t.count("{") == 1 for t in templates)
    asked = rephrase(rows, {None: templates})
    assert [r["answer"] for r in asked] == [r["answer"] for r in rows]
    for i, (r, a) in enumerate(zip(rows, asked)):
        n = r["key"].split(":")[1]
        assert a["query"].replace(",", "") == templates[i % len(templates)].format(n=n).replace(",", "")
    _, own = GENERATORS["number_to_words"]
    norm = {t.lower().strip(" .?!") for t in own["to_words"]}
    assert sum(t.lower().strip(" .?!") in norm for t in templates) == shared  # the rest: wordings it never uses


def test_rephrase_fills_each_question_form_from_its_key_and_leaves_out_forms_without_a_wording(tmp_path):
    from recipes.skills.generators.roman import to_roman
    from recipes.skills.probe import read_phrasings, rephrase

    (tmp_path / "sub.txt").write_text("take {b} away from {a}\n\nhow much is {a} less {b}\n")
    (tmp_path / "from.txt").write_text("what number is {r}?\n")
    rows = generate("arithmetic", "eval", 60, seed=0) + generate("roman", "eval", 20, seed=0)
    asked = rephrase(rows, read_phrasings([f"sub={tmp_path / 'sub.txt'}", f"from_roman={tmp_path / 'from.txt'}"]))
    forms = {r["key"].split(":")[0] for r in asked}
    assert forms == {"sub", "from_roman"} and len(asked) == sum(r["key"].split(":")[0] in forms for r in rows)
    subs = [r for r in asked if r["key"].startswith("sub:")]
    assert subs[0]["query"].startswith("take ") and subs[1]["query"].startswith("how much is ")  # blank lines skipped
    for r in asked:
        form, *fields = r["key"].split(":")
        q = r["query"].replace(",", "")
        if form == "sub":
            a, b = fields
            assert q in (f"take {b} away from {a}", f"how much is {a} less {b}") and int(r["answer"]) == int(a) - int(b)
        else:
            assert q == f"what number is {to_roman(int(fields[0]))}?" and r["answer"] == fields[0]


def test_probe_tallies_right_and_asked_per_question_form():
    from recipes.skills.probe import by_form

    rows = [{"key": k} for k in ("add:1:2", "mul:3:4", "add:5:6", "to_roman:7", "mul:8:9")]
    assert by_form(rows, [True, False, True, True, False]) == {"add": [2, 2], "mul": [0, 2], "to_roman": [1, 1]}
    assert by_form([], []) == {}


@pytest.mark.parametrize(
    "name, key, placeholders",
    [
        *[(f"arithmetic_add_blind{n}", "add:4821:377", {"a", "b"}) for n in ("", "2", "3")],
        *[(f"arithmetic_sub_blind{n}", "sub:4821:377", {"a", "b"}) for n in ("", "2", "3")],
        *[(f"arithmetic_mul_blind{n}", "mul:482:37", {"a", "b"}) for n in ("", "2", "3")],
        ("roman_to_blind", "to_roman:1994", {"n"}),
        ("roman_from_blind", "from_roman:1994", {"r"}),
        ("number_words_blind", "words:4932", {"w"}),
    ],
)
def test_blind_wordings_each_ask_once_for_their_forms_problem(name, key, placeholders):
    from recipes.skills.probe import slots

    lines = (ROOT / "recipes" / "skills" / "phrasings" / f"{name}.txt").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 20
    values = slots(key, 1)
    for line in lines:
        used = {k for k in values if "{" + k + "}" in line}
        assert (
            used == placeholders and all(line.count("{" + k + "}") == 1 for k in used) and line.count("{") == len(used)
        )
        assert line.format(**values)


def test_provider_negatives_are_valid_and_never_an_everyday_eval_prompt():
    from etr_hub.session import read_general_prompts
    from etr_hub.training.train_token import _read_negatives
    from recipes.skills.build import NEGATIVES

    held_out = {q.lower() for q in read_general_prompts(split="eval")}
    for skill, path in NEGATIVES.items():
        queries = _read_negatives(path)
        assert skill in SKILLS and len(queries) == len(set(queries)) >= 20
        assert not held_out & {q.lower() for q in queries}  # the false-fire check stays unseen


def test_a_later_phase_mixes_half_plain_half_variant_rows(monkeypatch):
    from recipes.skills import build

    monkeypatch.setitem(build.SIZES, "train", 40)
    assert build.phase_rows("number_to_words", {"fresh": True}, 3) == generate("number_to_words", "train", 40, 3)
    mixed = build.phase_rows("number_to_words", {"fresh": True, "composed": True}, 3)
    composed = {r["query"] for r in generate("number_to_words", "train", 20, 3, composed=True)}
    assert len(mixed) == 40 and sum(r["query"] in composed for r in mixed) == 20
    # a phase's style answers both halves in it
    styled = build.phase_rows("arithmetic", {"fresh": True, "focus": "products", "style": "carry_apart"}, 3)
    apart = generate("arithmetic", "train", 20, 3, style="carry_apart") + generate(
        "arithmetic", "train", 20, 3, focus="products", style="carry_apart"
    )
    assert sorted(r["response"] for r in styled) == sorted(r["response"] for r in apart)


def test_composed_pool_adds_other_pool_problems_in_composed_wordings_only_where_a_composer_exists():
    from recipes.skills.build import SIZES, composed_pool

    plain = generate("number_to_words", "pool", SIZES["pool"], seed=0)
    extra = composed_pool("number_to_words", plain, seed=0)
    assert len(extra) == SIZES["pool"] and extra == composed_pool("number_to_words", plain, seed=0)
    keys = {f"to_words:{r['response'].split(' ', 1)[0]}" for r in extra}
    assert not keys & {r["key"] for r in plain} and all(split_of(k) == "pool" for k in keys)
    assert all(r["label"] == "number_to_words" for r in extra)
    assert composed_pool("roman", generate("roman", "pool", 10, seed=0), seed=0) == []


MMLU = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmlu"


@pytest.mark.skipif(not MMLU.is_dir(), reason="needs ../shared/data/mmlu (prepare adds MMLU questions to the pool)")
def test_pool_rows_are_answered_in_the_style_of_the_skills_last_phase(tmp_path, monkeypatch):
    from recipes.skills import build

    assert build.answer_style("arithmetic") == build.LATER_PHASES["arithmetic"][-1]["style"] == "carry_apart"
    assert build.answer_style("roman") is None
    monkeypatch.setattr(build, "SIZES", {"train": 4, "pool": 6, "eval": 3})
    monkeypatch.setattr(build, "MMLU_DISTRACTORS", 2)
    build.prepare(tmp_path, seed=0, mmlu=MMLU, skills=["arithmetic"])
    pool = [json.loads(line) for line in (tmp_path / "pool_base.jsonl").read_text().splitlines()]
    arithmetic = [r["response"] for r in pool if r["label"] == "arithmetic"]
    plain = generate("arithmetic", "pool", 6, 0, style="carry_apart")
    assert arithmetic[:6] == [r["response"] for r in plain]
    # then as many in composed wordings (word problems), answered in that style too
    keys = {r["key"] for r in plain}
    composed = [r for r in generate("arithmetic", "pool", 12, 0, composed=True, style="carry_apart")]
    assert arithmetic[6:] == [r["response"] for r in composed if r["key"] not in keys][:6]
    train = [json.loads(line) for line in (tmp_path / "data" / "train" / "arithmetic.jsonl").read_text().splitlines()]
    assert train == generate("arithmetic", "train", 4, 0)  # the first phase's data, in the generator's style
