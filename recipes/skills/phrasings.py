"""How people ask for each skill: the phrasings `tasks.py` fills in (at least 12 per question form).

The last `tasks.HELD_OUT` of each list are used only for evaluation questions, so the eval measures
wording the experts never trained on. Add phrasings at the end of a list's training part.
"""

ARITHMETIC_TEMPLATES: dict[str, list[str]] = {
    "add": [
        "What is {a} + {b}?", "what's {a}+{b}", "Calculate {a} plus {b}.", "{a} + {b} = ?",
        "Could you please add {a} and {b} for me?", "What do you get when you add {b} to {a}?",
        "Quick question: {a} plus {b}?", "Find the sum of {a} and {b}.", "I need {a} + {b}, thanks!",
        "Compute {a} + {b}", "Hey, what's {a} and {b} added together?", "Please work out {a} plus {b}.",
        "How much is {a} + {b}?", "Add {a} to {b}.", "Sum {a} and {b} please",
    ],
    "sub": [
        "What is {a} - {b}?", "what's {a}-{b}", "Calculate {a} minus {b}.", "{a} - {b} = ?",
        "Could you please subtract {b} from {a}?", "What is {a} take away {b}?",
        "Quick question: {a} minus {b}?", "Find the difference {a} - {b}.", "I need {a} - {b}, thanks!",
        "Compute {a} - {b}", "Hey, what's {a} take away {b}?", "Please work out {a} minus {b}.",
        "How much is {a} - {b}?", "Take {b} away from {a}.", "What do you get if you subtract {b} from {a}?",
    ],
    "mul": [
        "What is {a} * {b}?", "what's {a}x{b}", "Calculate {a} times {b}.", "{a} × {b} = ?",
        "Could you please multiply {a} by {b}?", "What is {a} multiplied by {b}?",
        "Quick question: {a} times {b}?", "Find the product of {a} and {b}.", "I need {a} * {b}, thanks!",
        "Compute {a} x {b}", "Hey, what's {a} times {b}?", "Please work out {a} × {b}.",
        "How much is {a} times {b}?", "Multiply {a} and {b}.", "What's the product of {a} and {b}?",
    ],
}

SORTING_TEMPLATES: dict[str, list[str]] = {
    "asc": [
        "Sort these numbers in ascending order: {list}", "sort {list}", "Can you put {list} in order from smallest to largest?",
        "Please arrange the following from lowest to highest: {list}.", "Order these: {list} (smallest first)",
        "I have the scores {list}. Could you sort them ascending?", "Sort ascending: {list}", "Put {list} in increasing order.",
        "list {list} from least to greatest pls", "Rank these numbers from smallest to biggest: {list}",
        "What is {list} sorted in ascending order?", "Arrange {list} in ascending order, please.",
    ],
    "desc": [
        "Sort these numbers in descending order: {list}", "sort {list} descending", "Can you put {list} in order from largest to smallest?",
        "Please arrange the following from highest to lowest: {list}.", "Order these: {list} (largest first)",
        "I have the scores {list}. Could you sort them descending?", "Sort descending: {list}", "Put {list} in decreasing order.",
        "list {list} from greatest to least pls", "Rank these numbers from biggest to smallest: {list}",
        "What is {list} sorted in descending order?", "Arrange {list} in descending order, please.",
    ],
}

ROMAN_TEMPLATES: dict[str, list[str]] = {
    "to_roman": [
        "What is {n} in Roman numerals?", "convert {n} to roman numerals", "How do you write {n} in Roman numerals?",
        "Could you please write the number {n} as a Roman numeral?", "{n} in roman?", "Roman numeral for {n}",
        "I'm making a clock face, how would {n} look in Roman numerals?", "Please convert {n} into Roman numerals.",
        "Write {n} using Roman numerals.", "What's the Roman numeral for {n}?", "Express {n} in Roman numerals, please.",
        "My movie's copyright year is {n}; what is that as a Roman numeral?",
    ],
    "from_roman": [
        "What number is {r}?", "convert {r} to a number", "What is the Roman numeral {r} in regular numbers?",
        "Could you please tell me what {r} means as a number?", "{r} in arabic numerals?", "Value of the Roman numeral {r}",
        "I saw {r} on a building, what year is that?", "Please convert the Roman numeral {r} to an integer.",
        "What does {r} stand for?", "What's {r} as a decimal number?", "Translate {r} into a normal number, please.",
        "The film credits end with {r}. Which year is it?",
    ],
}

BASE_TEMPLATES: dict[str, list[str]] = {
    "to_bin": [
        "Convert {n} to binary.", "what is {n} in binary", "How do you write {n} in base 2?", "Could you please give me the binary for {n}?",
        "{n} in binary?", "Binary representation of {n}", "I'm learning about bits: what's {n} in binary?", "Please express the decimal number {n} in binary.",
        "Turn {n} into binary, please.", "What's {n} written in base two?", "decimal {n} to binary pls", "Show {n} as a binary number.",
    ],
    "from_bin": [
        "Convert binary {b} to decimal.", "what is {b} in decimal", "What number is the binary {b}?", "Could you please convert 0b{b} to decimal?",
        "binary {b} = ? in decimal", "Decimal value of binary {b}", "My register shows {b} in binary. What's that in decimal?", "Please turn the binary number {b} into base 10.",
        "What's 0b{b} in base ten?", "How much is {b} (base 2) in decimal?", "binary {b} to decimal pls", "Read the binary number {b} as a decimal.",
    ],
    "to_hex": [
        "Convert {n} to hexadecimal.", "what is {n} in hex", "How do you write {n} in base 16?", "Could you please give me the hex for {n}?",
        "{n} in hex?", "Hexadecimal representation of {n}", "I need a color channel value: what's {n} in hex?", "Please express the decimal number {n} in hexadecimal.",
        "Turn {n} into hex, please.", "What's {n} written in base sixteen?", "decimal {n} to hex pls", "Show {n} as a hexadecimal number.",
    ],
    "from_hex": [
        "Convert hex {h} to decimal.", "what is 0x{h} in decimal", "What number is the hexadecimal {h}?", "Could you please convert 0x{h} to decimal?",
        "hex {h} = ? in decimal", "Decimal value of hex {h}", "A debugger shows 0x{h}. What's that in decimal?", "Please turn the hexadecimal number {h} into base 10.",
        "What's 0x{h} in base ten?", "How much is {h} (base 16) in decimal?", "hex {h} to decimal pls", "Read the hex number {h} as a decimal.",
    ],
}
