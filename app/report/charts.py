"""The report's plots as PNG bytes: metric bars, accuracy per question type, step times, training loss.

Drawn on a bare matplotlib Figure with its own Agg canvas, never through pyplot, so a report leaves no
figures behind and does not touch the caller's backend.
"""

from __future__ import annotations

import io
from typing import Any

from app.evaluation.metrics import ITEM_METRICS
from app.report.summary import RunSummary, fmt, num, one_or_both, per_type

# Every plot write_report can produce; one missing from a new report is deleted from an old report's folder.
PLOT_NAMES = ("metrics", "accuracy_by_type", "step_times", "loss_curve")


def _figure(width: float = 7.0, height: float = 3.6) -> Any:
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
        ax.bar_label(bars, labels=[fmt(v, 3) for v in vals], fontsize=7, padding=1)
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


def _type_chance(m0: RunSummary, m1: RunSummary, qtype: str) -> float | None:
    a, b = per_type(m0, m1, "chance_by_type", qtype)
    return num(a if a is not None else b)


def _raw_steps(profile: dict[str, Any] | None, region: str) -> list[float]:
    raw = (profile or {}).get("raw") or {}
    values = (raw.get("steps") or {}).get(region) or []
    return [v for v in (num(x) for x in values) if v is not None]


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


def draw_plots(m0: RunSummary, m1: RunSummary,
               loss_curve: list[tuple[int, float]] | None) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes); plots without data are left out rather than drawn empty."""
    out: dict[str, tuple[str, bytes]] = {}
    out["metrics"] = ("Held-out metrics (all in the range 0 to 1)", _grouped_bars(
        "Eval metrics (higher is better)", list(ITEM_METRICS),
        [num(m0.metrics.get(k)) for k in ITEM_METRICS], [num(m1.metrics.get(k)) for k in ITEM_METRICS], True))
    types = sorted(set(m0.accuracy_by_type) | set(m1.accuracy_by_type))
    if types:
        labels = [f"{t}\n({one_or_both(*per_type(m0, m1, 'count_by_type', t), str)} q)" for t in types]
        out["accuracy_by_type"] = ("Accuracy per question type, with each type's chance level and question count",
                                   _grouped_bars("Accuracy per question type", labels,
                                                 [num(m0.accuracy_by_type.get(t)) for t in types],
                                                 [num(m1.accuracy_by_type.get(t)) for t in types], True,
                                                 [_type_chance(m0, m1, t) for t in types]))
    series = [("M1 train step", _raw_steps(m1.cost, "step")),
              ("M0 eval batch", _raw_steps(m0.eval_cost or m0.cost, "batch")),
              ("M1 eval batch", _raw_steps(m1.eval_cost, "batch"))]
    series = [s for s in series if s[1]]
    if series:
        out["step_times"] = ("Step-time histograms (seconds)", _histogram(series))
    points = [(float(step), float(loss)) for step, loss in (loss_curve or []) if num(loss) is not None]
    if points:
        out["loss_curve"] = ("M1 training loss per step", _loss_plot(points))
    return out
