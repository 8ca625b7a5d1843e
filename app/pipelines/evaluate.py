"""M0 `baseline` and `evaluate --model REF`: the same held-out evaluation, for the base model or an adapter.

Recipe: preflight → MLflow run → data (held-out split, report printed) → model (base, or base + adapter) →
batched generation + teacher-forced scoring (`evaluation.held_out`, resumable) → files → tracking.
Files (`RunFiles`): baseline writes training/baseline/{baseline_results.json, predictions.jsonl,
skipped_records.json} and profiling/baseline_profiling.json; evaluate writes evaluate_results.json (+ predictions
and evaluate_skipped_records.json) beside the adapter and profiling/evaluate_profiling.json.
Nothing is lost silently: every held-out question is scored or listed in the results' `skipped` with its reason
(refused while loading, or undecodable during evaluation), and the run is tagged with the skip counts and the
hash of the scored questions (`compare` checks it). Under torchrun the questions are sharded over the ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Config
from app.console import console
from app.errors import UserError
from app.preflight import preflight, refuse_deepspeed_for_evaluation
from app.run_files import EvalFiles, RunFiles


def _start(cfg: Config, command: str, deepspeed: Path | None, needs_store: bool = False) -> None:
    """Checks, then the process group under torchrun (no Trainer here to join it) and rank 0's console only."""
    from app import distributed
    from app.console import silence_other_ranks
    from app.models.setup import on_cuda
    from app.quiet import quiet_third_party

    refuse_deepspeed_for_evaluation(command, deepspeed)
    preflight(cfg, needs_store=needs_store)
    quiet_third_party()
    distributed.setup(on_cuda(cfg))
    silence_other_ranks()


def _evaluate(cfg: Config, load, model_ref: str, files: EvalFiles, mode: str | None) -> dict[str, Any]:
    """Inside the MLflow run: data → model (`load()` → model, processor, mode) → evaluation → files → tracking."""
    from app.data.ego4d import fingerprint
    from app.data.load import load_and_report
    from app.evaluation.held_out import evaluate_held_out
    from app.evaluation.questions import decode_skips, loading_skips
    from app.io import write_json_atomic
    from app.models.setup import on_cuda
    from app.tracking import log as track

    report = load_and_report(cfg)
    if not report.eval:
        raise UserError(f"{cfg.data.data_path}: no held-out records (set data.eval_ids_file or data.eval_fraction > 0)")
    track.set_tags({"dataset_fingerprint": fingerprint(report.records)})
    track.log_skipped(files.skipped, report)  # now: a crash below still leaves it
    model, processor, loaded_mode = load()
    results, cost = evaluate_held_out(cfg, model, processor, report.eval, model_ref, files, mode or loaded_mode,
                                      on_cuda(cfg), loading_skips(report, cfg.data.data_path))
    if results is None:  # not rank 0: its share is in rank 0's files
        return {}
    track.log_skipped(files.skipped, report, decode_skips(results))
    write_json_atomic(files.profiling, cost)
    track.log_config(cfg.to_dict())
    track.log_evaluation(results, cost, files.predictions, [files.results, files.profiling])
    return results


def baseline(cfg: Config, deepspeed: Path | None = None) -> dict[str, Any]:
    """M0: the base model, no training, on the held-out split — one MLflow run tagged `baseline`."""
    from app.models.setup import load_model
    from app.tracking.run import mlflow_run

    _start(cfg, "baseline", deepspeed)
    with mlflow_run(cfg, "baseline"):
        def load():
            model, processor, _ = load_model(cfg, "baseline", say=console.print)
            return model, processor, "baseline"

        return _evaluate(cfg, load, cfg.model.name_or_path, RunFiles(cfg.output_dir).baseline(), "baseline")


def evaluate(cfg: Config, model_ref: str, deepspeed: Path | None = None) -> dict[str, Any]:
    """An adapter folder, `models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/ID/PATH` on the held-out split."""
    from app.models.setup import load_adapter
    from app.tracking.run import mlflow_run

    _start(cfg, "evaluate", deepspeed, needs_store=model_ref.startswith(("models:/", "runs:/")))
    if model_ref.startswith(("models:/", "runs:/")):
        from app.tracking.registry import resolve_model_ref

        adapter = resolve_model_ref(model_ref, cfg)
    else:
        adapter = Path(model_ref)
        if not adapter.is_dir():
            raise UserError(f"{adapter}: adapter folder not found")
    files = RunFiles(cfg.output_dir).evaluate(model_ref)
    with mlflow_run(cfg, "evaluate", tags={"model_ref": model_ref}):
        def load():
            model, processor, meta = load_adapter(cfg, adapter, say=console.print)
            return model, processor, meta.get("mode", "evaluate")

        results = _evaluate(cfg, load, model_ref, files, None)
        if results:
            console.print(f"results: {files.results}", highlight=False)
        return results
