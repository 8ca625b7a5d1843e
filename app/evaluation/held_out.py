"""The held-out evaluation of one model, resumable and sharded: what baseline, evaluate and train's last step run.

Predictions are appended per batch to a hidden log; a rerun with the same model, config and data continues after
the last complete batch and writes the same results file as an uninterrupted run. Results files hold no timings
(those are in the profiling JSON), so they are reproducible byte for byte. Under torchrun the questions are
sharded round robin over the ranks; each rank answers its share (with its own log) and rank 0 gathers the rows,
puts them back in question order and writes every file. Per-question answers do not depend on batch
composition, so the metrics equal a one-process run's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app import distributed
from app.config import Config
from app.console import console
from app.errors import UserError
from app.evaluation.generate import EVAL_REGIONS, eval_items, evaluate_items
from app.evaluation.metrics import EVAL_METRICS, MCQ_METRICS, aggregate, item_metrics
from app.evaluation.questions import account, summary_line, video_error_reason
from app.io import write_atomic
from app.profiler import Profiler
from app.run_files import EvalFiles


def _run_key(model_ref: str, cfg: Config, keys: list[str]) -> str:
    blob = json.dumps([model_ref, cfg.config_hash(), keys]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _read_log(log: Path, run_key: str) -> dict[str, dict]:
    """Rows of complete batches from an earlier, interrupted run of the same evaluation."""
    if not log.is_file():
        return {}
    rows: dict[str, dict] = {}
    with log.open(encoding="utf-8") as f:
        header = f.readline()
        try:
            if json.loads(header).get("run_key") != run_key:
                return {}
        except json.JSONDecodeError:
            return {}
        for line in f:
            try:
                batch = json.loads(line)  # one line per batch: a torn last line is simply not resumed
            except json.JSONDecodeError:
                break
            for row in batch["rows"]:
                rows[row["key"]] = row
            for skip in batch.get("skips", []):
                rows[skip["key"]] = skip
    return rows


def evaluate_held_out(
    cfg: Config, model, processor, records, model_ref: str, files: EvalFiles, mode: str, on_cuda: bool,
    load_skips: list[dict] | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Evaluate `records` (held-out); write `files.results` and `files.predictions`. Returns (results, cost).

    `load_skips` are the held-out records refused while loading (`questions.loading_skips`): they count in
    `num_questions` and are listed in `skipped`, so the results say what the evaluation could not see.
    A collective under torchrun: every rank calls it; results are None off rank 0, the cost is global on all.
    """
    items = eval_items(records)
    if cfg.eval.max_samples:
        items = items[: cfg.eval.max_samples]
    if not items:
        raise UserError(f"{cfg.data.data_path}: no held-out questions to evaluate (check data.eval_ids_file)")
    mine = distributed.shard(items)
    run_key = _run_key(model_ref, cfg, [it.key for it in mine])
    log = files.partial_log(distributed.rank(), distributed.world_size())
    done = _read_log(log, run_key)
    if done:
        console.print(f"resuming evaluation: {len(done)} of {len(mine)} questions already answered")
    else:
        write_atomic(log, json.dumps({"run_key": run_key}) + "\n")
    todo = [it for it in mine if it.key not in done]

    profiler = Profiler(mode, use_cuda=on_cuda, regions=EVAL_REGIONS)
    pending_skips: list[dict] = []

    def on_skip(item, reason: str) -> None:
        pending_skips.append({"key": item.key, "id": item.record.id, "file": str(item.record.video),
                              "skipped": video_error_reason(reason, item.record.video)})

    with log.open("a", encoding="utf-8") as f, Progress(
        TextColumn(f"[bold]{files.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not distributed.is_main(),
    ) as bar:
        task = bar.add_task(files.name, total=len(mine), completed=len(mine) - len(todo))

        def on_batch(rows: list[dict]) -> None:
            f.write(json.dumps({"rows": rows, "skips": pending_skips}) + "\n")
            f.flush()
            for row in rows + pending_skips:
                done[row["key"]] = row
            pending_skips.clear()

        evaluate_items(
            model, processor, todo, cfg.data, cfg.eval.batch_size, cfg.eval.max_new_tokens, profiler,
            on_batch=on_batch, on_skip=on_skip, progress=lambda n: bar.advance(task, n),
        )

    # Every rank's rows (and how many it resumed) to every rank; rank 0 alone turns them into files.
    shares = distributed.all_gather_objects({"rows": [done[it.key] for it in mine], "resumed": len(mine) - len(todo)})
    cost = profiler.report({
        "questions": len(items),
        "resumed_questions": sum(s["resumed"] for s in shares),
    })
    # Ranks generate in parallel: the global rate is every rank's tokens over the slowest rank's generate time.
    gen_seconds = max(r["region_seconds"]["generate"] for r in cost["per_rank"])
    cost["generated_tokens"] = cost["num_tokens"]
    cost["generated_tokens_per_second"] = cost["num_tokens"] / gen_seconds if gen_seconds else None
    results = None
    if distributed.is_main():
        by_key = {row["key"]: row for share in shares for row in share["rows"]}
        results = _write_results(cfg, items, by_key, model_ref, files, mode, load_skips or [], len(records))
        print_summary(files.name, results["metrics"], cost)
        console.print(summary_line(results), highlight=False, soft_wrap=True)
    # The logs go only once the results exist: a rank 0 that dies while writing leaves every shard resumable.
    distributed.barrier()
    log.unlink(missing_ok=True)
    return results, cost


def _write_results(
    cfg: Config, items, by_key: dict[str, dict], model_ref: str, files: EvalFiles, mode: str,
    load_skips: list[dict], num_records: int,
) -> dict[str, Any]:
    ordered = [by_key[it.key] for it in items]
    answered = [r for r in ordered if "prediction" in r]
    skipped = [r for r in ordered if "skipped" in r]
    per_item = [
        {**r, **item_metrics(r["prediction"], r["reference"], r["answer_nll"], r["answer_tokens"], r.get("options"),
                             r.get("option_nll"))} for r in answered
    ]
    metrics = aggregate(
        per_item,
        types=[r["question_type"] for r in per_item],
        preds=[r["prediction"] for r in per_item],
        refs=[r["reference"] for r in per_item],
    )
    accounting = account([r["key"] for r in answered], skipped, load_skips, num_records, len(items))
    results = {"mode": mode, "model": model_ref, **accounting, "metrics": metrics, "config_hash": cfg.config_hash()}
    write_atomic(files.predictions, "".join(json.dumps(r) + "\n" for r in per_item))
    write_atomic(files.results, json.dumps(results, indent=2) + "\n")
    return results


def print_summary(name: str, metrics: dict, cost: dict) -> None:
    table = Table(title=f"{name}: held-out metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in EVAL_METRICS:
        value = metrics.get(key)
        if key in MCQ_METRICS:
            if value is None:  # no multiple-choice question in this evaluation
                continue
            key = f"{key} ({metrics.get('mcq_questions', '?')} questions)"
        table.add_row(key, "-" if value is None else f"{value:.4f}")
    counts, chance = metrics.get("count_by_type") or {}, metrics.get("chance_by_type") or {}
    for qtype, acc in sorted((metrics.get("accuracy_by_type") or {}).items()):
        level = f", chance {chance[qtype]:.2f}" if qtype in chance else ""
        table.add_row(escape(f"accuracy[{qtype}] ({counts.get(qtype, '?')} questions{level})"), f"{acc:.4f}")
    batch = cost.get("batch_seconds", {})
    if batch.get("median") is not None:
        table.add_row("batch latency median / p95 (s)", f"{batch['median']:.3f} / {batch['p95']:.3f}")
    console.print(table)
