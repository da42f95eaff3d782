"""The prompts of the text-conditioned stand-in mnist-sd: the templates it was trained on (its tokenizer is built in
scripts/bundles.py)."""

from __future__ import annotations

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPT_TEMPLATES = [
    "a handwritten {word}", "the digit {digit}", "a handwritten digit {digit}", "the number {word}",
    "a {word}", "{digit}", "an image of the digit {word}", "a drawing of a {digit}",
]


def prompts_for(label: int) -> list[str]:
    """All training prompts of one digit label (e.g. 7 -> 'a handwritten seven', 'the digit 7', ...)."""
    return [t.format(word=NUMBER_WORDS[label], digit=label) for t in PROMPT_TEMPLATES]
