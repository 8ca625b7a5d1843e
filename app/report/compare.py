"""M0-vs-M1 comparison report: markdown + a self-contained HTML page.

Pure rendering: the caller fetches both runs (MLflow or elsewhere) into `RunSummary` objects. The HTML
inlines its CSS and every plot as a base64 PNG so it can be mailed or archived as one file and opened
offline; the markdown links the same PNGs from `plots/` because base64 blobs make it unreadable as text.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.report.questions import question_check, question_rows, question_warnings, same_questions_line

UNIT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu4", "anls")  # bounded in [0, 1]: one shared axis
EVAL_METRICS = (*UNIT_METRICS, "answer_nll", "perplexity")
LOWER_IS_BETTER = frozenset({"answer_nll", "perplexity"})  # losses; everything else is a score
PLOT_NAMES = ("metrics", "accuracy_by_type", "step_times", "loss_curve")
GIB = 1024**3
# Below this a difference is float noise, not a win.
TIE_TOLERANCE = 1e-9


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


def _num(value: Any) -> float | None:
    # Profiles and MLflow hand back None, strings or NaN for "not measured"; all of them mean n/a here.
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _row(name: str, a: Any, b: Any, lower_is_better: bool) -> dict[str, Any]:
    m0, m1 = _num(a), _num(b)
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
    rows = [_row(k, m0.metrics.get(k), m1.metrics.get(k), k in LOWER_IS_BETTER) for k in names]
    for qtype in sorted(set(m0.accuracy_by_type) | set(m1.accuracy_by_type)):
        rows.append(_row(f"accuracy[{qtype}]", m0.accuracy_by_type.get(qtype), m1.accuracy_by_type.get(qtype), False))
    return rows


def _fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    return "n/a" if value is None else f"{value:{'+' if sign else ''}.{digits}f}"


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
        table.add_row(escape(r["metric"]), _fmt(r["m0"]), _fmt(r["m1"]), _fmt(r["delta"], sign=True),
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
    v = _num(value)
    return "n/a" if v is None else f"{v / GIB:.2f}"


def _region(profile: dict[str, Any], stat: str) -> str:
    # Training steps and evaluation batches are the comparable "one unit of work" regions.
    region = profile.get("step_seconds") or profile.get("batch_seconds") or {}
    return _fmt(_num(region.get(stat) if isinstance(region, dict) else None), 3)


def _gpu_mem(profile: dict[str, Any]) -> str:
    if _num(profile.get("peak_gpu_memory_bytes")) is None and profile.get("device") == "cpu":
        return "n/a (CPU)"
    return _gib(profile.get("peak_gpu_memory_bytes"))


COST_FIELDS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("device", lambda p: str(p.get("device") or "n/a")),
    ("timer", lambda p: str(p.get("timer") or "n/a")),
    ("tokens/s", lambda p: _fmt(_num(p.get("tokens_per_second")), 1)),
    ("samples/s", lambda p: _fmt(_num(p.get("samples_per_second")), 2)),
    ("wall time (s)", lambda p: _fmt(_num(p.get("total_wall_seconds")), 1)),
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


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    # Figure + Agg canvas directly instead of pyplot: nothing is registered in pyplot's global figure list,
    # so nothing leaks between reports and the caller's backend choice is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fig.clear()  # drop artists now; the figure itself is garbage once this returns
    return buf.getvalue()


def _grouped_bars(title: str, labels: list[str], a: list[float | None], b: list[float | None], ylim1: bool,
                  chance: list[float | None] | None = None) -> bytes:
    import numpy as np

    fig = _figure(max(5.0, 1.1 * len(labels) + 2))
    ax = fig.add_subplot()
    x, w = np.arange(len(labels)), 0.38
    for off, vals, name, color in ((-w / 2, a, "M0 baseline", "#8c8c8c"), (w / 2, b, "M1", "#2f6db5")):
        bars = ax.bar(x + off, [v if v is not None else 0.0 for v in vals], w, label=name, color=color)
        ax.bar_label(bars, labels=[_fmt(v, 3) for v in vals], fontsize=7, padding=1)
    levels = [(i, c) for i, c in enumerate(chance or []) if c is not None]
    for n, (i, c) in enumerate(levels):  # one dashed segment across each group's two bars
        ax.hlines(c, i - w - 0.02, i + w + 0.02, colors="#d62728", linestyles="--", linewidth=1.2,
                  label="chance (most common answer)" if n == 0 else None)
    ax.set_xticks(x, labels)
    if ylim1:
        ax.set_ylim(0, 1.25)  # headroom above 1.0 keeps the legend clear of the bars
    ax.set_title(title)
    ax.legend(loc="upper center", ncols=3 if levels else 2, fontsize=8)
    return _png(fig)


def _per_type(m0: RunSummary, m1: RunSummary, field_name: str, qtype: str) -> tuple[Any, Any]:
    return getattr(m0, field_name).get(qtype), getattr(m1, field_name).get(qtype)


def _one_or_both(a: Any, b: Any, fmt: Callable[[Any], str]) -> str:
    """One value when both runs agree (they were scored on the same questions), else "M0 value / M1 value"."""
    if a is None and b is None:
        return "n/a"
    return fmt(a if a is not None else b) if a == b or a is None or b is None else f"{fmt(a)} / {fmt(b)}"


def _type_chance(m0: RunSummary, m1: RunSummary, qtype: str) -> float | None:
    a, b = _per_type(m0, m1, "chance_by_type", qtype)
    return _num(a if a is not None else b)


def _raw_steps(profile: dict[str, Any] | None, region: str) -> list[float]:
    raw = (profile or {}).get("raw") or {}
    values = (raw.get("steps") or {}).get(region) or []
    return [v for v in (_num(x) for x in values) if v is not None]


def _histogram(series: list[tuple[str, list[float]]]) -> bytes:
    import numpy as np

    fig = _figure()
    ax = fig.add_subplot()
    # Shared bin edges, otherwise overlaid histograms with different bin widths are not comparable.
    edges = np.histogram_bin_edges(np.concatenate([np.asarray(v) for _, v in series]), bins=30)
    for name, values in series:
        ax.hist(values, bins=edges, alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set_xlabel("seconds per step / batch")
    ax.set_ylabel("count")
    ax.set_title("Step-time distribution")
    ax.legend(fontsize=8)
    return _png(fig)


def _loss_plot(points: list[tuple[float, float]]) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], color="#2f6db5", linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("M1 training loss")
    return _png(fig)


def _plots(m0: RunSummary, m1: RunSummary, loss_curve: list[tuple[int, float]] | None) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes); plots without data are left out rather than drawn empty."""
    out: dict[str, tuple[str, bytes]] = {}
    out["metrics"] = ("Held-out metrics (all in the range 0 to 1)", _grouped_bars(
        "Eval metrics (higher is better)", list(UNIT_METRICS),
        [_num(m0.metrics.get(k)) for k in UNIT_METRICS], [_num(m1.metrics.get(k)) for k in UNIT_METRICS], True))
    types = sorted(set(m0.accuracy_by_type) | set(m1.accuracy_by_type))
    if types:
        labels = [f"{t}\n({_one_or_both(*_per_type(m0, m1, 'count_by_type', t), str)} q)" for t in types]
        out["accuracy_by_type"] = ("Accuracy per question type, with each type's chance level and question count",
                                   _grouped_bars("Accuracy per question type", labels,
                                                 [_num(m0.accuracy_by_type.get(t)) for t in types],
                                                 [_num(m1.accuracy_by_type.get(t)) for t in types], True,
                                                 [_type_chance(m0, m1, t) for t in types]))
    series = [("M1 train step", _raw_steps(m1.cost, "step")),
              ("M0 eval batch", _raw_steps(m0.eval_cost or m0.cost, "batch")),
              ("M1 eval batch", _raw_steps(m1.eval_cost, "batch"))]
    series = [s for s in series if s[1]]
    if series:
        out["step_times"] = ("Step-time histograms (seconds)", _histogram(series))
    # The trainer records (step, epoch, loss) triples; take the first and last field so both shapes work.
    points = [(float(p[0]), float(p[-1])) for p in (loss_curve or []) if _num(p[-1]) is not None]
    if not points:
        raw_losses = ((m1.cost or {}).get("raw") or {}).get("step_losses") or []
        points = [(float(i + 1), v) for i, v in enumerate(_num(x) for x in raw_losses) if v is not None]
    if points:
        out["loss_curve"] = ("M1 training loss per step", _loss_plot(points))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    # Temp file in the same directory, then rename: a reader sees the old file or the new one, never half.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be read by others (web server, teammates)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _md(text: Any) -> str:
    # Pipes break table cells, and raw HTML in a run name would be rendered by most markdown viewers.
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows] + [""]


def _metric_cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[r["metric"], _fmt(r["m0"]), _fmt(r["m1"]), _fmt(r["delta"], sign=True), r["better"]] for r in rows]


ACCURACY_HEADER = ["metric", "questions", "chance", "M0", "M1", "delta (M1-M0)", "better"]
CHANCE_NOTE = ("Exact match per question type over the held-out questions counted. Chance is what always giving "
               "the type's most common answer would score: an accuracy near it means the video was not read.")


def _accuracy_cells(rows: list[dict[str, Any]], m0: RunSummary, m1: RunSummary) -> list[list[str]]:
    out = []
    for r in rows:
        qtype = r["metric"].removeprefix("accuracy[").removesuffix("]")
        out.append([r["metric"], _one_or_both(*_per_type(m0, m1, "count_by_type", qtype), str),
                    _one_or_both(*_per_type(m0, m1, "chance_by_type", qtype), lambda v: _fmt(_num(v), 3)),
                    _fmt(r["m0"]), _fmt(r["m1"]), _fmt(r["delta"], sign=True), r["better"]])
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


CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f2f4f7}
.M1{color:#1a7f37;font-weight:600}.M0{color:#b42318;font-weight:600}
.warn{background:#fff4e5;border-left:4px solid #f79009;padding:.6rem 1rem;margin:1rem 0}
figure{margin:1rem 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9rem}
"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(header: list[str], rows: list[list[str]], winner_col: int | None = None) -> str:
    head = "".join(f"<th>{_h(c)}</th>" for c in header)
    body = []
    for row in rows:
        cells = [f'<td class="{_h(c)}">{_h(c)}</td>' if i == winner_col else f"<td>{_h(c)}</td>"
                 for i, c in enumerate(row)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _render_html(title: str, s: dict[str, Any], m0: RunSummary, m1: RunSummary, plots: dict[str, Any]) -> str:
    parts = [f"<h1>{_h(title)}</h1>"]
    parts += [f'<p class="warn"><strong>Warning:</strong> {_h(w)}</p>' for w in s["warnings"]]
    parts += [f"<p>{_h(s['summary'])}</p>", "<h2>Held-out questions</h2>", f"<p>{_h(s['questions'][0])}</p>",
              _html_table(["", "M0", "M1"], s["questions"][1])]
    parts += ["<h2>Metrics</h2>", _html_table(s["metric_header"], s["metrics"], 4)]
    parts += ["<h2>Accuracy per question type</h2>", f"<p>{_h(CHANCE_NOTE)}</p>",
              _html_table(ACCURACY_HEADER, s["accuracy"], 6) if s["accuracy"] else "<p>n/a</p>"]
    parts += ["<h2>Throughput and memory</h2>", _html_table(*s["cost"]), "<h2>Plots</h2>"]
    for cap, png in plots.values():
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{_h(cap)}" src="data:image/png;base64,{b64}">'
                     f"<figcaption>{_h(cap)}</figcaption></figure>")
    links = [f'<a href="{_h(u)}">{_h(u)}</a>' if (u := _safe_url(r.url)) else "n/a" for r in (m0, m1)]
    run_rows = "".join(f"<tr><td>{_h(k)}</td><td>{_h(a)}</td><td>{_h(b)}</td></tr>" for k, a, b in s["runs"])
    parts += ["<h2>Runs</h2>", f"<table><thead><tr><th></th><th>M0</th><th>M1</th></tr></thead><tbody>{run_rows}"
              f"<tr><td>url</td><td>{links[0]}</td><td>{links[1]}</td></tr></tbody></table>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_h(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(m0: RunSummary, m1: RunSummary, out_dir: Path, title: str = "M0 baseline vs M1 QLoRA",
                 loss_curve: list[tuple[int, float]] | None = None) -> tuple[Path, Path]:
    """Write `report.md` (+ `plots/*.png`) and a self-contained `report.html` into out_dir; returns (md, html)."""
    out_dir = Path(out_dir)
    plots = _plots(m0, m1, loss_curve)
    # Plots first, so the markdown never points at a PNG that isn't there yet.
    for name, (_, png) in plots.items():
        _write_atomic(out_dir / "plots" / f"{name}.png", png)
    for name in set(PLOT_NAMES) - set(plots):  # a plot from an earlier report into this folder is now stale
        (out_dir / "plots" / f"{name}.png").unlink(missing_ok=True)
    sections = _sections(m0, m1)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    _write_atomic(md_path, _render_md(title, sections, m0, m1, plots).encode("utf-8"))
    _write_atomic(html_path, _render_html(title, sections, m0, m1, plots).encode("utf-8"))
    return md_path, html_path
