"""M0 baseline and `evaluate --model REF`: the same held-out evaluation, for a base model or an adapter.

Recipe: config → data (held-out split) → model (base, or base + adapter) → batched generation + teacher-
forced scoring → metrics → files. Files (under output_dir):
  baseline:  training/baseline/baseline_results.json, training/baseline/predictions.jsonl,
             training/baseline/skipped_records.json, profiling/baseline_profiling.json
  evaluate:  {run folder of the adapter}/evaluate_results.json (+ predictions, evaluate_skipped_records.json),
             profiling/evaluate_profiling.json
Nothing is lost silently: the data report is printed, every held-out question is scored or listed in the
results' `skipped` with its reason (refused while loading, or undecodable during evaluation), and the run is
tagged with the skip counts and the hash of the scored questions (`compare` checks it).
Resumable: predictions are appended per batch to a hidden log; a rerun with the same model, config and data
continues after the last complete batch and writes the same results file as an uninterrupted run. Results
files hold no timings (those are in the profiling JSON), so they are reproducible byte for byte.
Under torchrun the questions are sharded round robin over the ranks; each rank answers its share (with its
own resumable log) and rank 0 gathers the rows, puts them back in question order and writes every file.
Per-question answers do not depend on batch composition, so the metrics equal a one-process run's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from app.config import Config
from app.errors import UserError
from app.pipelines.preflight import preflight
from app.training import distributed

console = Console()
ADAPTER_META = "ego4d_ft.json"  # written next to each adapter: how it was trained


# --- models ----------------------------------------------------------------------------------------------------------
def _on_cuda(cfg: Config) -> bool:
    import torch

    return torch.cuda.is_available() and not cfg.use_cpu


def load_base(cfg: Config, mode: str = "baseline", path: str | None = None):
    from app.models.loading import load_model_and_processor
    from app.models.setup import attention_implementation, model_path

    on_cuda = _on_cuda(cfg)
    attn, note = attention_implementation(cfg.model, on_cuda)
    if note:
        console.print(note)
    model, processor = load_model_and_processor(
        path or model_path(cfg.model),
        family=cfg.model.family,
        mode=mode,
        torch_dtype=cfg.model.torch_dtype if on_cuda else "float32",
        attn_implementation=attn,
        compute_dtype=cfg.quantization.compute_dtype,
        device_map={"": distributed.local_rank()} if on_cuda else None,
        trust_remote_code=cfg.model.trust_remote_code,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    return model, processor


def load_adapter(cfg: Config, adapter_dir: Path):
    """Base model (read from the adapter's config) + the adapter, quantised as it was trained."""
    from peft import PeftModel

    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise UserError(f"{adapter_dir}: no adapter_model.safetensors (pickled adapter weights are never loaded)")
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    meta_file = adapter_dir / ADAPTER_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    base = meta.get("base_model") or base
    if not base:
        raise UserError(f"{config_file}: base_model_name_or_path is empty")
    if not Path(base).exists() and "/" not in base:
        raise UserError(f"{config_file}: base model {base!r} not found")
    mode = meta.get("mode", "lora")
    model, processor = load_base(cfg, mode="qlora" if mode == "qlora" else "baseline", path=base)
    return PeftModel.from_pretrained(model, str(adapter_dir)), processor, meta


# --- the resumable prediction log ----------------------------------------------------------------------------------
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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- evaluation ------------------------------------------------------------------------------------------------------
def run_evaluation(
    cfg: Config, model, processor, records, model_ref: str, out_dir: Path, name: str, mode: str,
    load_skips: list[dict] | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Evaluate `records` (held-out) and write `{name}_results.json` + `{name}_predictions.jsonl` in out_dir.

    `load_skips` are the held-out records refused while loading (`questions.loading_skips`): they count in
    `num_questions` and are listed in `skipped`, so the results say what the evaluation could not see.
    A collective under torchrun: every rank calls it; results are None off rank 0, the cost is global on all.
    """
    from app.evaluation.generate import EVAL_REGIONS, eval_items, evaluate_items
    from app.evaluation.questions import summary_line, video_error_reason
    from app.training.profiler import Profiler

    items = eval_items(records)
    if cfg.eval.max_samples:
        items = items[: cfg.eval.max_samples]
    if not items:
        raise UserError(f"{cfg.data.data_path}: no held-out questions to evaluate (check data.eval_ids_file)")
    mine = distributed.shard(items)
    world = distributed.world_size()
    run_key = _run_key(model_ref, cfg, [it.key for it in mine])
    # One log per rank: ranks append concurrently, and a rerun at the same world size resumes every shard.
    log = out_dir / (f".{name}_predictions.rank{distributed.rank()}of{world}.partial.jsonl" if world > 1
                     else f".{name}_predictions.partial.jsonl")
    done = _read_log(log, run_key)
    if done:
        console.print(f"resuming evaluation: {len(done)} of {len(mine)} questions already answered")
    else:
        _write_atomic(log, json.dumps({"run_key": run_key}) + "\n")
    todo = [it for it in mine if it.key not in done]

    profiler = Profiler(mode, use_cuda=_on_cuda(cfg), regions=EVAL_REGIONS)
    pending_skips: list[dict] = []

    def on_skip(item, reason: str) -> None:
        pending_skips.append({"key": item.key, "id": item.record.id, "file": str(item.record.video),
                              "skipped": video_error_reason(reason, item.record.video)})

    with log.open("a", encoding="utf-8") as f, Progress(
        TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
        transient=True, disable=not distributed.is_main(),
    ) as bar:
        task = bar.add_task(name, total=len(mine), completed=len(mine) - len(todo))

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
        results = _write_results(cfg, items, by_key, model_ref, out_dir, name, mode, load_skips or [],
                                 len(records))
        _print_summary(name, results["metrics"], cost)
        console.print(summary_line(results), highlight=False, soft_wrap=True)
    # The logs go only once the results exist: a rank 0 that dies while writing leaves every shard resumable.
    distributed.barrier()
    log.unlink(missing_ok=True)
    return results, cost


def _write_results(
    cfg: Config, items, by_key: dict[str, dict], model_ref: str, out_dir: Path, name: str, mode: str,
    load_skips: list[dict], num_records: int,
) -> dict[str, Any]:
    from app.evaluation.metrics import aggregate, item_metrics
    from app.evaluation.questions import account

    ordered = [by_key[it.key] for it in items]
    answered = [r for r in ordered if "prediction" in r]
    skipped = [r for r in ordered if "skipped" in r]
    per_item = [
        {**r, **item_metrics(r["prediction"], r["reference"], r["answer_nll"], r["answer_tokens"])} for r in answered
    ]
    metrics = aggregate(
        per_item,
        types=[r["question_type"] for r in per_item],
        preds=[r["prediction"] for r in per_item],
        refs=[r["reference"] for r in per_item],
    )
    accounting = account([r["key"] for r in answered], skipped, load_skips, num_records, len(items))
    results = {"mode": mode, "model": model_ref, **accounting, "metrics": metrics, "config_hash": cfg.config_hash()}
    _write_atomic(out_dir / f"{name}_predictions.jsonl", "".join(json.dumps(r) + "\n" for r in per_item))
    _write_atomic(out_dir / f"{name}_results.json", json.dumps(results, indent=2) + "\n")
    return results


def _print_summary(name: str, metrics: dict, cost: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{name}: held-out metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("exact_match", "token_f1", "rouge_l", "bleu4", "anls", "answer_nll", "perplexity"):
        value = metrics.get(key)
        table.add_row(key, "-" if value is None else f"{value:.4f}")
    counts, chance = metrics.get("count_by_type") or {}, metrics.get("chance_by_type") or {}
    for qtype, acc in sorted((metrics.get("accuracy_by_type") or {}).items()):
        level = f", chance {chance[qtype]:.2f}" if qtype in chance else ""
        table.add_row(escape(f"accuracy[{qtype}] ({counts.get(qtype, '?')} questions{level})"), f"{acc:.4f}")
    batch = cost.get("batch_seconds", {})
    if batch.get("median") is not None:
        table.add_row("batch latency median / p95 (s)", f"{batch['median']:.3f} / {batch['p95']:.3f}")
    console.print(table)


def _held_out(cfg: Config):
    from app.pipelines.data import load_and_report

    report = load_and_report(cfg)
    if not report.eval:
        raise UserError(
            f"{cfg.data.data_path}: no held-out records (set data.eval_ids_file or data.eval_fraction > 0)"
        )
    return report


def _join_ranks(cfg: Config) -> None:
    """Under torchrun: join the process group (no Trainer here to do it) and print on rank 0 only."""
    from app.pipelines import data

    distributed.setup(_on_cuda(cfg))
    distributed.silence_other_ranks(console, data.console)


def _track_evaluation(results: dict, cost: dict, files: list[Path], predictions: Path) -> None:
    from app.tracking import log as track

    track.log_summary({**track.eval_metrics(results["metrics"]), **track.cost_metrics(cost, "eval_cost/")})
    track.set_tags(track.eval_question_tags(results))
    track.log_step_figures(cost, "batch", None, "eval")
    track.log_predictions(predictions)
    track.log_files(*files)


def evaluate_trained(cfg: Config, final_dir: Path, report, mode: str, run_dir: Path):
    """`train`'s step 7: the adapter just saved, loaded back from disk exactly as `evaluate --model` would.

    Every rank evaluates its share (a collective); results are None off rank 0.
    """
    import gc

    import torch

    # The Trainer left ZeRO-3 switched on process-wide: from_pretrained would shard the evaluation copy too.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from app.evaluation.questions import loading_skips

    unset_hf_deepspeed_config()
    if torch.cuda.is_available():  # free the training copy before the evaluation copy loads (slow on CPU)
        gc.collect()
        torch.cuda.empty_cache()
    if not report.eval:
        console.print("[yellow]no held-out records: the adapter was not evaluated[/]")
        return None, {}
    model, processor, _ = load_adapter(cfg, final_dir)
    return run_evaluation(cfg, model, processor, report.eval, str(final_dir), run_dir, "eval", mode,
                          loading_skips(report, cfg.data.data_path))


def baseline(cfg: Config) -> dict[str, Any]:
    """M0: the base model, no training, on the held-out split — one MLflow run tagged `baseline`."""
    from app.data.ego4d import fingerprint
    from app.evaluation.questions import decode_skips, loading_skips
    from app.quiet import quiet_third_party
    from app.tracking import log as track
    from app.tracking.run import mlflow_run
    from app.training.profiler import write_json_atomic

    preflight(cfg)
    quiet_third_party()
    _join_ranks(cfg)
    with mlflow_run(cfg, "baseline"):
        report = _held_out(cfg)
        track.set_tags({"dataset_fingerprint": fingerprint(report.records)})
        out = Path(cfg.output_dir)
        folder = out / "training" / "baseline"
        track.log_skipped(folder / "skipped_records.json", report)  # now: a crash below still leaves it
        model, processor = load_base(cfg)
        results, cost = run_evaluation(
            cfg, model, processor, report.eval, cfg.model.name_or_path, folder, "baseline", "baseline",
            loading_skips(report, cfg.data.data_path),
        )
        if results is None:  # not rank 0: its share is in rank 0's files
            return {}
        track.log_skipped(folder / "skipped_records.json", report, decode_skips(results))
        os.replace(folder / "baseline_predictions.jsonl", folder / "predictions.jsonl")
        profile = write_json_atomic(out / "profiling" / "baseline_profiling.json", cost)
        track.log_config(cfg.to_dict())
        _track_evaluation(results, cost, [folder / "baseline_results.json", profile], folder / "predictions.jsonl")
        return results


def evaluate(cfg: Config, model_ref: str) -> dict[str, Any]:
    """An adapter folder, `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/ID/PATH` on the held-out split."""
    from app.data.ego4d import fingerprint
    from app.evaluation.questions import decode_skips, loading_skips
    from app.quiet import quiet_third_party
    from app.tracking import log as track
    from app.tracking.run import mlflow_run
    from app.training.profiler import write_json_atomic

    preflight(cfg)
    quiet_third_party()
    if model_ref.startswith(("models:/", "runs:/")):
        from app.tracking.registry import resolve_model_ref

        adapter = resolve_model_ref(model_ref, cfg)
        out_dir = Path(cfg.output_dir) / "evaluate" / model_ref.split(":/", 1)[1].replace("/", "_").replace("@", "_")
    else:
        adapter = Path(model_ref)
        if not adapter.is_dir():
            raise UserError(f"{adapter}: adapter folder not found")
        out_dir = adapter.parent
    _join_ranks(cfg)
    with mlflow_run(cfg, "evaluate", tags={"model_ref": model_ref}):
        report = _held_out(cfg)
        track.set_tags({"dataset_fingerprint": fingerprint(report.records)})
        skipped_file = out_dir / "evaluate_skipped_records.json"  # beside train's own skipped_records.json
        track.log_skipped(skipped_file, report)
        model, processor, meta = load_adapter(cfg, adapter)
        results, cost = run_evaluation(
            cfg, model, processor, report.eval, model_ref, out_dir, "evaluate", meta.get("mode", "evaluate"),
            loading_skips(report, cfg.data.data_path),
        )
        if results is None:
            return {}
        track.log_skipped(skipped_file, report, decode_skips(results))
        profile = Path(cfg.output_dir) / "profiling" / "evaluate_profiling.json"
        write_json_atomic(profile, cost)
        track.log_config(cfg.to_dict())
        _track_evaluation(results, cost, [out_dir / "evaluate_results.json", profile],
                          out_dir / "evaluate_predictions.jsonl")
        console.print(f"results: {out_dir / 'evaluate_results.json'}", highlight=False)
        return results
