"""Were M0 and M1 scored on the same held-out questions? Read from the run tags baseline, evaluate and train
write (app/tracking/log.py): the count and hash of the scored question keys, and the skip counts.

A comparison on different questions is not like for like: `compare` refuses it unless told otherwise, and a
run made before these tags existed gets a warning instead, since nothing can be checked.
"""

from __future__ import annotations

from typing import Any

from app.report.summary import RunSummary

# Run tags written by baseline / evaluate / train (app/tracking/log.py): label -> tag.
QUESTION_TAGS = (
    ("held-out questions scored", "eval_questions"),
    ("held-out questions skipped", "eval_questions_skipped"),
    ("held-out records skipped while loading", "skipped_held_out"),
    ("scored questions hash", "eval_questions_hash"),
)


def question_check(m0: RunSummary, m1: RunSummary) -> dict[str, Any]:
    """Were both runs scored on the same held-out questions? `same` is None when a run predates the hash tag."""
    sides = {k: (r.tags.get("eval_questions") or "n/a", r.tags.get("eval_questions_hash")) for k, r in
             (("m0", m0), ("m1", m1))}
    h0, h1 = sides["m0"][1], sides["m1"][1]
    return {**sides, "same": (h0 == h1) if h0 and h1 else None}


def _sides(check: dict[str, Any]) -> str:
    return "; ".join(f"{k.upper()} {check[k][0]} questions, hash {check[k][1] or 'n/a'}" for k in ("m0", "m1"))


def different_questions_error(m0: RunSummary, m1: RunSummary) -> str:
    """One line for `compare` to refuse with when the two runs were scored on different questions."""
    return (f"M0 (run {m0.run_id}) and M1 (run {m1.run_id}) were scored on different held-out questions "
            f"({_sides(question_check(m0, m1))}); evaluate both on the same data, or pass --allow-different-questions")


def same_questions_line(check: dict[str, Any]) -> str:
    answer = {True: "yes", False: "no", None: "unknown (a run has no eval_questions_hash tag)"}[check["same"]]
    return f"Held-out questions scored: M0 {check['m0'][0]}, M1 {check['m1'][0]}; same questions: {answer}."


def question_rows(m0: RunSummary, m1: RunSummary) -> list[list[str]]:
    return [[label, m0.tags.get(tag) or "n/a", m1.tags.get(tag) or "n/a"] for label, tag in QUESTION_TAGS]


def question_warnings(m0: RunSummary, m1: RunSummary) -> list[str]:
    check = question_check(m0, m1)
    if check["same"] is False:
        return [f"M0 and M1 were scored on different held-out questions ({_sides(check)}): "
                "their metrics are not like for like."]
    if check["same"] is None:
        return ["A run has no eval_questions_hash tag (made by an older version), so it cannot be checked that "
                "M0 and M1 were scored on the same questions."]
    return []
