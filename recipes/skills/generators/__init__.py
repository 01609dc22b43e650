"""One module per skill: `sample(rng) -> Problem` (a random problem, its canonical key, gold answer and
worked reply) and `TEMPLATES` (how people ask, per question form; at least 12 each). A skill is registered
in one line below.

The last `common.HELD_OUT` phrasings of each list are used only for evaluation questions, so the eval
measures wording the experts never trained on: add new phrasings at the end of a list's training part."""

from __future__ import annotations

from recipes.skills.generators import arithmetic, base_conversion, number_to_words, number_words, roman, sorting

GENERATORS = {
    "arithmetic": (arithmetic.sample, arithmetic.TEMPLATES),
    "sorting": (sorting.sample, sorting.TEMPLATES),
    "roman": (roman.sample, roman.TEMPLATES),
    "base_conversion": (base_conversion.sample, base_conversion.TEMPLATES),
    "number_words": (number_words.sample, number_words.TEMPLATES),
    "number_to_words": (number_to_words.sample, number_to_words.TEMPLATES),
}
# samplers that weight one kind of problem up, for a later training phase (build.py's LATER_PHASES `focus`)
FOCUS = {
    "arithmetic": {
        "unequal_lengths": arithmetic.sample_unequal_lengths,
        "products": arithmetic.sample_products,
        "product_shapes": arithmetic.sample_product_shapes,
        "every_form": arithmetic.sample_every_form,
        "signs": arithmetic.sample_signs,
    }
}
# other answer styles (`style(problem) -> problem`, the same problem answered another way), for a training phase
# (build.py's LATER_PHASES `style`), and what each one does
STYLES = {"arithmetic": {"carry_apart": arithmetic.carry_apart, "compared": arithmetic.compared}}
STYLE_NOTES = {
    "carry_apart": "each place's product written before its carry is added, `6 x 8 = 48, 48 + 3 = 51`",
    "compared": "carry_apart, and each difference's sign decided after the question by comparing the numbers by "
    "place (`thousands 7 = 7, hundreds 6 > 2, so 7615 > 7290`)",
}
# phrasings composed from parts (`composer(rng, problem, typed) -> template`), for later phases (`composed`)
COMPOSED = {"arithmetic": arithmetic.composed_template, "number_to_words": number_to_words.composed_template}
