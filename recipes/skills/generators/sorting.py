"""Sorting: 4 to 10 integers (negatives too), ascending or descending, by insertion one number at a time."""

from __future__ import annotations

import random

from recipes.skills.generators.common import Problem

TEMPLATES: dict[str, list[str]] = {
    "asc": [
        "Sort these numbers in ascending order: {list}",
        "sort {list}",
        "Can you put {list} in order from smallest to largest?",
        "Please arrange the following from lowest to highest: {list}.",
        "Order these: {list} (smallest first)",
        "I have the scores {list}. Could you sort them ascending?",
        "Sort ascending: {list}",
        "Put {list} in increasing order.",
        "list {list} from least to greatest pls",
        "Rank these numbers from smallest to biggest: {list}",
        "What is {list} sorted in ascending order?",
        "Arrange {list} in ascending order, please.",
    ],
    "desc": [
        "Sort these numbers in descending order: {list}",
        "sort {list} descending",
        "Can you put {list} in order from largest to smallest?",
        "Please arrange the following from highest to lowest: {list}.",
        "Order these: {list} (largest first)",
        "I have the scores {list}. Could you sort them descending?",
        "Sort descending: {list}",
        "Put {list} in decreasing order.",
        "list {list} from greatest to least pls",
        "Rank these numbers from biggest to smallest: {list}",
        "What is {list} sorted in descending order?",
        "Arrange {list} in descending order, please.",
    ],
}


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


def sample(rng: random.Random) -> Problem:
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


def list_text(nums: list[int], rng: random.Random) -> str:
    style = rng.random()
    if style < 0.6:
        return ", ".join(map(str, nums))
    if style < 0.8:
        return " ".join(map(str, nums))
    return ", ".join(map(str, nums[:-1])) + " and " + str(nums[-1])
