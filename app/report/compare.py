"""M0-vs-M1 comparison report: markdown + a self-contained HTML page.

Pure rendering: the caller fetches both runs (MLflow or elsewhere) into `RunSummary` objects. The HTML
inlines its CSS and every plot as a base64 PNG so it can be mailed or archived as one file and opened
offline; the markdown links the same PNGs from `plots/` because base64 blobs make it unreadable as text.
This module builds the tables and writes both files; the plots are drawn in charts.py and the HTML page
is rendered from a template in html_page.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.evaluation.metrics import EVAL_METRICS, MCQ_METRICS
from app.io import write_atomic
from app.report.charts import PLOT_NAMES, draw_plots
from app.report.html_page import render_html
from app.report.questions import question_check, question_rows, question_warnings, same_questions_line
from app.report.summary import LOWER_IS_BETTER, RunSummary, fmt, num, one_or_both, per_type

GIB = 1024**3
# Below this a difference is float noise, not a win.
TIE_TOLERANCE = 1e-9


def _row(name: str, a: Any, b: Any, lower_is_better: bool) -> dict[str, Any]:
    m0, m1 = num(a), num(b)
    if m0 is None or m1 is None:
        return {"metric": name, "m0": m0, "m1": m1, "delta": None, "better": "n/a"}
    delta = m1 - m0
    if abs(delta) <= TIE_TOLERANCE:
        better = "="
    else:
        better = "M1" if (delta < 0) == lower_is_better else "M0"
    return {"metric": name, "m0": m0, "m1": m1, "delta": delta, "better": better}


def comparison_rows(m0: RunSummary, m1: RunSummary) -> list[dict[str, Any]]:
    """One row per eval metric, then one per question type. `better` is "M1", "M0", "=" or "n/a" (a side missing)."""
    # Metrics a newer evaluator adds still get a row (higher-is-better unless listed) instead of vanishing.
    names = [*EVAL_METRICS, *sorted((set(m0.metrics) | set(m1.metrics)) - set(EVAL_METRICS))]
    # Multiple-choice rows only where a run had such questions: an open-ended evaluation shows no empty rows.
    names = [k for k in names if k not in MCQ_METRICS or k in m0.metrics or k in m1.metrics]
    rows = [_row(k, m0.metrics.get(k), m1.metrics.get(k), k in LOWER_IS_BETTER) for k in names]
    for qtype in sorted(set(m0.accuracy_by_type) | set(m1.accuracy_by_type)):
        rows.append(_row(f"accuracy[{qtype}]", m0.accuracy_by_type.get(qtype), m1.accuracy_by_type.get(qtype), False))
    return rows


def print_table(rows: list[dict[str, Any]], console: Any = None) -> None:
    """Print the comparison rows as a rich table (M0, M1, delta, winner)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="M0 vs M1")
    table.add_column("metric")
    for name in ("M0", "M1", "delta", "better"):
        table.add_column(name, justify="right")
    style = {"M1": "green", "M0": "red"}
    for r in rows:
        better = r["better"]
        # escape: rich would read "accuracy[color]" as a style tag and print just "accuracy".
        table.add_row(escape(r["metric"]), fmt(r["m0"]), fmt(r["m1"]), fmt(r["delta"], sign=True),
                      f"[{style[better]}]{better}[/]" if better in style else better)
    (console or Console()).print(table)


def _profiles(tag: str, run: RunSummary) -> list[tuple[str, dict[str, Any]]]:
    # A baseline has no training, so its `cost` already is the evaluation profile; don't show it twice.
    if run.mode == "baseline":
        return [(f"{tag} eval", run.eval_cost or run.cost or {})]
    out = [(f"{tag} train", run.cost or {})]
    if run.eval_cost is not run.cost:
        out.append((f"{tag} eval", run.eval_cost or {}))  # an empty profile renders as an explicit n/a column
    return out


def _gib(value: Any) -> str:
    v = num(value)
    return "n/a" if v is None else f"{v / GIB:.2f}"


def _region(profile: dict[str, Any], stat: str) -> str:
    # Training steps and evaluation batches are the comparable "one unit of work" regions.
    region = profile.get("step_seconds") or profile.get("batch_seconds") or {}
    return fmt(num(region.get(stat) if isinstance(region, dict) else None), 3)


def _gpu_mem(profile: dict[str, Any]) -> str:
    if num(profile.get("peak_gpu_memory_bytes")) is None and profile.get("device") == "cpu":
        return "n/a (CPU)"
    return _gib(profile.get("peak_gpu_memory_bytes"))


COST_FIELDS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("device", lambda p: str(p.get("device") or "n/a")),
    ("timer", lambda p: str(p.get("timer") or "n/a")),
    ("tokens/s", lambda p: fmt(num(p.get("tokens_per_second")), 1)),
    ("samples/s", lambda p: fmt(num(p.get("samples_per_second")), 2)),
    ("wall time (s)", lambda p: fmt(num(p.get("total_wall_seconds")), 1)),
    ("steps / batches", lambda p: str(p.get("num_steps")) if p.get("num_steps") is not None else "n/a"),
    ("step median (s)", lambda p: _region(p, "median")),
    ("step p95 (s)", lambda p: _region(p, "p95")),
    ("peak GPU memory (GiB)", _gpu_mem),
    ("peak host RSS (GiB)", lambda p: _gib(p.get("peak_host_rss_bytes"))),
)


def _cost_table(m0: RunSummary, m1: RunSummary) -> tuple[list[str], list[list[str]]]:
    profiles = _profiles("M0", m0) + _profiles("M1", m1)
    header = ["", *(label for label, _ in profiles)]
    return header, [[name, *(fn(p or {}) for _, p in profiles)] for name, fn in COST_FIELDS]


def _run_table(m0: RunSummary, m1: RunSummary) -> list[tuple[str, str, str]]:
    tag_keys = ("git_commit", "config_hash", "dataset_fingerprint", "model_name")
    rows = [("run id", m0.run_id, m1.run_id), ("run name", m0.run_name, m1.run_name), ("mode", m0.mode, m1.mode)]
    rows += [(k.replace("_", " "), m0.tags.get(k) or "n/a", m1.tags.get(k) or "n/a") for k in tag_keys]
    return rows


def _warnings(m0: RunSummary, m1: RunSummary) -> list[str]:
    out = []
    fp0, fp1 = m0.tags.get("dataset_fingerprint"), m1.tags.get("dataset_fingerprint")
    if fp0 and fp1 and fp0 != fp1:
        out.append(f"Dataset fingerprints differ (M0 {fp0}, M1 {fp1}): the runs were evaluated on different data, "
                   "so this comparison is not like for like.")
    elif not (fp0 and fp1):
        out.append("A dataset fingerprint is missing, so it cannot be checked that both runs used the same data.")
    return out + question_warnings(m0, m1)


def _safe_url(url: str | None) -> str | None:
    # Only web links: a `javascript:` URL from a tampered tag would otherwise become a clickable script.
    return url if url and url.split(":", 1)[0].lower() in ("http", "https") else None




def _md(text: Any) -> str:
    # Pipes break table cells, and raw HTML in a run name would be rendered by most markdown viewers.
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows] + [""]


def _metric_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[r["metric"], fmt(r["m0"]), fmt(r["m1"]), fmt(r["delta"], sign=True), r["better"]] for r in rows]


ACCURACY_HEADER = ["metric", "questions", "chance", "M0", "M1", "delta (M1-M0)", "better"]
CHANCE_NOTE = ("Exact match per question type over the held-out questions counted. Chance is what always giving "
               "the type's most common answer would score: an accuracy near it means the video was not read.")


def _accuracy_cells(rows: list[dict[str, Any]], m0: RunSummary, m1: RunSummary) -> list[list[str]]:
    out = []
    for r in rows:
        qtype = r["metric"].removeprefix("accuracy[").removesuffix("]")
        out.append([r["metric"], one_or_both(*per_type(m0, m1, "count_by_type", qtype), str),
                    one_or_both(*per_type(m0, m1, "chance_by_type", qtype), lambda v: fmt(num(v), 3)),
                    fmt(r["m0"]), fmt(r["m1"]), fmt(r["delta"], sign=True), r["better"]])
    return out


def _sections(m0: RunSummary, m1: RunSummary) -> dict[str, Any]:
    rows = comparison_rows(m0, m1)
    metric_rows = [r for r in rows if not r["metric"].startswith("accuracy[")]
    acc_rows = [r for r in rows if r["metric"].startswith("accuracy[")]
    decided = [r for r in rows if r["better"] in ("M1", "M0")]
    wins = sum(r["better"] == "M1" for r in decided)
    return {"metric_header": ["metric", "M0", "M1", "delta (M1-M0)", "better"],
            "metrics": _metric_cells(metric_rows), "accuracy": _accuracy_cells(acc_rows, m0, m1),
            "summary": f"M1 is better on {wins} of {len(decided)} comparable rows "
                       "(answer_nll and perplexity: lower is better).",
            "cost": _cost_table(m0, m1), "runs": _run_table(m0, m1), "warnings": _warnings(m0, m1),
            "questions": (same_questions_line(question_check(m0, m1)), question_rows(m0, m1))}


def _render_md(title: str, s: dict[str, Any], m0: RunSummary, m1: RunSummary, plots: dict[str, Any]) -> str:
    out = [f"# {_md(title)}", ""]
    for w in s["warnings"]:  # a blank line each: consecutive quote lines would merge into one paragraph
        out += [f"> **Warning:** {_md(w)}", ""]
    out += [s["summary"], "", "## Held-out questions", "", _md(s["questions"][0]), ""]
    out += _md_table(["", "M0", "M1"], s["questions"][1])
    out += ["## Metrics", ""] + _md_table(s["metric_header"], s["metrics"])
    out += ["## Accuracy per question type", "", CHANCE_NOTE, ""]
    out += _md_table(ACCURACY_HEADER, s["accuracy"]) if s["accuracy"] else ["n/a", ""]
    out += ["## Throughput and memory", ""] + _md_table(*s["cost"])
    out += ["## Plots", ""] + [f"![{cap}](plots/{name}.png)\n" for name, (cap, _) in plots.items()]
    links = [f"[open]({u})" if (u := _safe_url(r.url)) else "n/a" for r in (m0, m1)]
    out += ["## Runs", ""] + _md_table(["", "M0", "M1"], [list(r) for r in s["runs"]] + [["url", *links]])
    return "\n".join(out)


def write_report(m0: RunSummary, m1: RunSummary, out_dir: Path, title: str = "M0 baseline vs M1 QLoRA",
                 loss_curve: list[tuple[int, float]] | None = None) -> tuple[Path, Path]:
    """Write `report.md` (+ `plots/*.png`) and a self-contained `report.html` into out_dir; returns (md, html)."""
    out_dir = Path(out_dir)
    plots = draw_plots(m0, m1, loss_curve)
    # Plots first, so the markdown never points at a PNG that isn't there yet.
    for name, (_, png) in plots.items():
        write_atomic(out_dir / "plots" / f"{name}.png", png)
    for name in set(PLOT_NAMES) - set(plots):  # a plot from an earlier report into this folder is now stale
        (out_dir / "plots" / f"{name}.png").unlink(missing_ok=True)
    sections = _sections(m0, m1)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    write_atomic(md_path, _render_md(title, sections, m0, m1, plots).encode("utf-8"))
    urls = (_safe_url(m0.url), _safe_url(m1.url))
    page = render_html(title, sections, urls, plots, chance_note=CHANCE_NOTE, accuracy_header=ACCURACY_HEADER)
    write_atomic(html_path, page.encode("utf-8"))
    return md_path, html_path
