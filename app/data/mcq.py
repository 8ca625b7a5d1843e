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


def option_reply(index: int, option: str) -> str:
    """How an option reads as a full answer ("B. blue"): what the likelihood score compares, so that a model that
    answers with the letter and one that answers with the text both show their preference."""
    return f"{LETTERS[index]}. {option.strip()}"


def check_options(options: object) -> tuple[str, ...] | None:
    """The turn's options as a tuple, or None when they are not 2-10 non-empty strings."""
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        return None
    if not all(isinstance(o, str) and o.strip() for o in options):
        return None
    return tuple(options)
