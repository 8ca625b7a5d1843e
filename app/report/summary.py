"""What the report knows about one run, and the value helpers every part of the report shares.

Kept apart from the rendering so that the tables (compare.py), the charts (charts.py) and the question
checks (questions.py) all depend on this module and none of them on each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOWER_IS_BETTER = frozenset({"answer_nll", "perplexity"})  # losses; everything else is a score


@dataclass
class RunSummary:
    run_id: str
    run_name: str
    mode: str  # "baseline" | "qlora" | "lora"
    metrics: dict[str, float]
    accuracy_by_type: dict[str, float]
    cost: dict[str, Any]
    eval_cost: dict[str, Any] | None
    params: dict[str, str]
    url: str | None
    tags: dict[str, str] = field(default_factory=dict)
    count_by_type: dict[str, int] = field(default_factory=dict)  # held-out questions behind each type's accuracy
    chance_by_type: dict[str, float] = field(default_factory=dict)  # a constant answer's accuracy per type


def num(value: Any) -> float | None:
    """`value` as a finite float, or None for anything that is not a measurement."""
    # Profiles and MLflow hand back None, strings or NaN for "not measured"; all of them mean n/a here.
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    """Fixed-point text for a number, "n/a" for None."""
    return "n/a" if value is None else f"{value:{'+' if sign else ''}.{digits}f}"


def per_type(m0: RunSummary, m1: RunSummary, field_name: str, qtype: str) -> tuple[Any, Any]:
    """Both runs' value of one per-question-type field (e.g. count_by_type) for `qtype`."""
    return getattr(m0, field_name).get(qtype), getattr(m1, field_name).get(qtype)


def one_or_both(a: Any, b: Any, to_text: Callable[[Any], str]) -> str:
    """One value when both runs agree (they were scored on the same questions), else "M0 value / M1 value"."""
    if a is None and b is None:
        return "n/a"
    return to_text(a if a is not None else b) if a == b or a is None or b is None else f"{to_text(a)} / {to_text(b)}"
