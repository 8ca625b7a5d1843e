"""Held-out accounting: every held-out question is either scored or listed as skipped with its reason.

Questions are lost in two places: while loading (the validator refuses a held-out record, so its questions
are never asked) and while evaluating (a clip that passed the load-time check fails to decode). Both kinds
go into the results JSON's `skipped`, into `num_questions`, and into one console line. The hash of the
scored question keys (`record_id#gpt_index`) lets `compare` check that M0 and M1 were scored on the same
questions.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.io import one_line

LOADING, EVALUATION, TRAINING = "loading", "evaluation", "training"


def questions_hash(keys: Iterable[str]) -> str:
    """Order-free: two runs that scored the same questions agree however their batches were sharded."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def _questions_per_id(data_path: Path) -> dict[str, int]:
    # A refused record never became a Record, so its question count comes from the raw file; the file was
    # already read once without error, so a failure here only means "count unknown" (0), never a crash.
    from app.data.ego4d import read_json_list
    from app.errors import UserError

    try:
        raw = read_json_list(Path(data_path))
    except (UserError, OSError):
        return {}
    out: dict[str, int] = {}
    for r in raw:
        if isinstance(r, dict) and isinstance(r.get("id"), (str, int)) and isinstance(r.get("conversations"), list):
            gpt = sum(1 for t in r["conversations"] if isinstance(t, dict) and t.get("from") == "gpt")
            out.setdefault(str(r["id"]), gpt)
    return out


def skip_entry(skip: Any, stage: str = LOADING) -> dict[str, Any]:
    """A `SkippedRecord` as the JSON row written to results files and the MLflow artifact."""
    return {"id": skip.id, "file": skip.file, "reason": skip.reason, "detail": skip.detail, "split": skip.split,
            "stage": stage}


def loading_skips(report: Any, data_path: Path) -> list[dict[str, Any]]:
    """Held-out records refused while loading, each with the number of questions (gpt turns) it held."""
    held_out = report.skipped_held_out()
    per_id = _questions_per_id(data_path) if held_out else {}
    return [{**skip_entry(s), "questions": per_id.get(s.id or "", 0)} for s in held_out]


def video_error_reason(message: str, video: Path) -> str:
    """A VideoError reads "<path>: <reason>"; the path is kept in `file`, so the reason is one line without it."""
    first = one_line(message) or "cannot decode video"
    return first.removeprefix(f"{video}: ")


def account(answered_keys: list[str], eval_skips: list[dict], load_skips: list[dict],
            records_asked: int, questions_asked: int) -> dict[str, Any]:
    """The results JSON's accounting: totals over both kinds of skip, and every skip with its reason."""
    lost_at_load = sum(s["questions"] for s in load_skips)
    skipped = [*load_skips, *({"key": s["key"], "id": s["id"], "file": s.get("file"), "reason": s["skipped"],
                               "stage": EVALUATION} for s in eval_skips)]
    return {
        "num_questions": questions_asked + lost_at_load,
        "num_answered": len(answered_keys),
        "num_skipped": questions_asked - len(answered_keys) + lost_at_load,
        "held_out_records": {
            "total": records_asked + len(load_skips),
            "skipped_while_loading": len(load_skips),
            "skipped_at_decode": len({s["id"] for s in eval_skips}),
        },
        "questions_hash": questions_hash(answered_keys),
        "skipped": skipped,
    }


def decode_skips(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The records whose clip failed to decode during evaluation, once each, as skipped-record rows."""
    rows: dict[str, dict[str, Any]] = {}
    for s in results.get("skipped", []):
        if s["stage"] == EVALUATION and s["id"] not in rows:
            rows[s["id"]] = {"id": s["id"], "file": s.get("file"), "reason": s["reason"], "detail": None,
                             "split": "eval", "stage": EVALUATION}
    return list(rows.values())


def _short(reason: str) -> str:
    # "cannot decode video (avcodec …)" and its siblings differ only in the decoder's detail: group them.
    return reason.split(" (", 1)[0]


def summary_line(results: dict[str, Any]) -> str:
    """`scored N of M held-out questions; skipped K (reason: n while loading, …)` for the console."""
    line = f"scored {results['num_answered']} of {results['num_questions']} held-out questions"
    by_reason: Counter = Counter()
    for s in results.get("skipped", []):
        where = "while loading" if s["stage"] == LOADING else "during evaluation"
        by_reason[f"{_short(s['reason'])} {where}"] += s.get("questions", 1) if s["stage"] == LOADING else 1
    if not results.get("num_skipped") and not by_reason:
        return line + "; skipped 0"
    reasons = ", ".join(f"{reason}: {n}" for reason, n in by_reason.most_common())
    records = results.get("held_out_records") or {}
    lost = records.get("skipped_while_loading", 0) + records.get("skipped_at_decode", 0)
    return (f"{line}; skipped {results['num_skipped']} ({reasons}); "
            f"{lost} of {records.get('total', '?')} held-out records not scored")
