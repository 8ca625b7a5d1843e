"""Multiple-choice questions as the field asks them (EgoSchema in lmms-eval): the question, lettered options, and
"Answer with the option's letter from the given choices directly."; the answer is the letter.

A record's gpt turn keeps its `options` (JSON list of strings) so evaluation can score the question both ways:
the letter the model wrote, and the option the model finds most likely (`app.evaluation.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence

LETTERS = "ABCDEFGHIJ"
POST_PROMPT = "Answer with the option's letter from the given choices directly."
MCQ = "mcq"  # the question type of imported multiple-choice turns


def format_question(question: str, options: Sequence[str]) -> str:
    lines = [question.strip(), *(f"{LETTERS[i]}. {option.strip()}" for i, option in enumerate(options))]
    return "\n".join([*lines, POST_PROMPT])


def option_replies(options: Sequence[str], reference: str) -> list[str]:
    """Each option as the answer would be written in this data, which is what the likelihood score compares: the
    bare letters when the reference is a letter (EgoSchema, `data sample --mcq`), the option texts when it is one
    of them, else "B. text". Scoring the letters reads the model's preference at the answer's first position, so
    a base model that would go on to write prose is still scored on its choice."""
    ref = reference.strip()
    if ref in LETTERS[: len(options)]:
        return list(LETTERS[: len(options)])
    if ref in [o.strip() for o in options]:
        return [o.strip() for o in options]
    return [f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options)]


def check_options(options: object) -> tuple[str, ...] | None:
    """The turn's options as a tuple, or None when they are not 2-10 non-empty strings."""
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        return None
    if not all(isinstance(o, str) and o.strip() for o in options):
        return None
    return tuple(options)
