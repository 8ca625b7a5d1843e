"""What a run records: per-step metrics, summary metrics under shared keys, artifacts and figures.

Baseline and fine-tuned runs log evaluation under `eval/...` and evaluation cost under `eval_cost/...`, so
selecting both runs in the MLflow UI's compare view lines them up key by key. Training adds `train/...`
(per step: loss, learning rate, region times, tokens/s) and `train_cost/...` (profiler summary).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from app.io import write_json_atomic
from app.tracking.run import retry_locked

STAT_KEYS = ("mean", "median", "p95", "min", "max")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class StepLogger:
    """Per-step metrics sent to MLflow in batches (every `every_steps` steps or `every_seconds`, and at `flush`).

    One asynchronous `log_metrics` per step still cost ~5 ms of a 30 ms tiny-CPU step (benchmarks/RESULTS.md
    P3): MLflow's logging thread runs a SQLite transaction per call and takes the GIL from the training loop.
    One batch per 50 steps moves the same rows at a fraction of that; the UI's charts lag by at most a batch.
    """

    MAX_PER_CALL = 1000  # MLflow's log_batch limit on metrics per request

    def __init__(self, every_steps: int = 50, every_seconds: float = 15.0) -> None:
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self._pending: list[Any] = []
        self._steps = 0
        self._since = time.monotonic()
        self._run_id: str | None = None

    def __call__(self, step: int, figures: dict[str, Any], prefix: str = "train/") -> None:
        import mlflow
        from mlflow.entities import Metric

        run = mlflow.active_run()
        if run is None:
            return
        if self._run_id not in (None, run.info.run_id):
            self.flush()  # a new run: the old one's rows go to the old one
        self._run_id = run.info.run_id
        now = int(time.time() * 1000)
        self._pending += [Metric(f"{prefix}{k}", float(v), now, step) for k, v in figures.items() if _finite(v)]
        self._steps += 1
        if self._steps >= self.every_steps or time.monotonic() - self._since >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        if self._pending and self._run_id is not None:
            from mlflow import MlflowClient

            client = MlflowClient()
            for i in range(0, len(self._pending), self.MAX_PER_CALL):
                # Asynchronous: the SQLite write must not show up in the step time the profiler measures.
                client.log_batch(self._run_id, metrics=self._pending[i : i + self.MAX_PER_CALL], synchronous=False)
        self._pending, self._steps, self._since = [], 0, time.monotonic()


log_step = StepLogger()


def cost_metrics(profile: dict[str, Any], prefix: str) -> dict[str, float]:
    """Profiler JSON → flat metrics: totals, throughput, memory, and the stats of every timed region."""
    out: dict[str, float] = {}
    for key in ("total_wall_seconds", "tokens_per_second", "samples_per_second", "peak_gpu_memory_bytes",
                "peak_host_rss_bytes", "generated_tokens_per_second", "num_steps"):
        if _finite(profile.get(key)):
            out[f"{prefix}{key}"] = float(profile[key])
    for key, value in profile.items():
        if key.endswith("_seconds") and isinstance(value, dict):
            for stat in STAT_KEYS:
                if _finite(value.get(stat)):
                    out[f"{prefix}{key}/{stat}"] = float(value[stat])
    for i, seconds in enumerate(profile.get("epoch_wall_seconds") or []):
        out[f"{prefix}epoch_wall_seconds/{i + 1}"] = float(seconds)
    return out


def eval_metrics(metrics: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    out = {f"{prefix}{k}": float(v) for k, v in metrics.items() if _finite(v)}
    # Per question type: accuracy, the questions it is over, and the chance level it is read against.
    for group in ("accuracy", "count", "chance"):
        for qtype, value in (metrics.get(f"{group}_by_type") or {}).items():
            if _finite(value):
                out[f"{prefix}{group}/{qtype}"] = float(value)
    return out


def log_summary(metrics: dict[str, float]) -> None:
    import mlflow

    if mlflow.active_run() is not None and metrics:
        retry_locked(mlflow.log_metrics)(metrics)


def log_files(*paths: Path, folder: str | None = None) -> None:
    import mlflow

    if mlflow.active_run() is None:
        return
    for path in paths:
        if path and Path(path).is_file():
            retry_locked(mlflow.log_artifact)(str(path), artifact_path=folder)


def log_config(config: dict[str, Any]) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        retry_locked(mlflow.log_dict)(config, "config.yaml")


def log_predictions(predictions_jsonl: Path, artifact_file: str = "predictions.json") -> None:
    import mlflow

    if mlflow.active_run() is None or not predictions_jsonl.is_file():
        return
    rows = [json.loads(line) for line in predictions_jsonl.read_text(encoding="utf-8").splitlines() if line]
    if not rows:
        return
    columns = sorted({k for r in rows for k in r})
    retry_locked(mlflow.log_table)(data={c: [r.get(c) for r in rows] for c in columns}, artifact_file=artifact_file)


def log_step_figures(profile: dict[str, Any], step_region: str, losses: list[tuple[int, float]] | None,
                     prefix: str) -> None:
    """MLflow has no histogram type: a histogram figure, plus the raw per-step table beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    if mlflow.active_run() is None:
        return
    steps = (profile.get("raw") or {}).get("steps") or {}
    if steps.get(step_region):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(steps[step_region], bins=min(40, max(5, len(steps[step_region]) // 2)), color="#4c72b0")
        ax.set_xlabel(f"{step_region} time (s)")
        ax.set_ylabel("count")
        ax.set_title(f"{prefix.rstrip('/')}: {step_region} time per step ({len(steps[step_region])} steps)")
        fig.tight_layout()
        retry_locked(mlflow.log_figure)(fig, f"figures/{prefix.rstrip('/')}_{step_region}_time_histogram.png")
        plt.close(fig)
        table = {"step": list(range(1, len(steps[step_region]) + 1))}
        table.update({f"{name}_seconds": values for name, values in steps.items()
                      if len(values) == len(steps[step_region])})
        retry_locked(mlflow.log_table)(data=table, artifact_file=f"tables/{prefix.rstrip('/')}_step_times.json")
    if losses:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in losses], [v for _, v in losses], color="#dd8452")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title("loss curve")
        fig.tight_layout()
        retry_locked(mlflow.log_figure)(fig, "figures/loss_curve.png")
        plt.close(fig)


def log_evaluation(results: dict[str, Any], cost: dict[str, Any], predictions: Path,
                   files: list[Path] | None = None) -> None:
    """One held-out evaluation (baseline, evaluate, or train's last step): its metrics and cost, the question
    tags `compare` checks, the per-batch figures, the predictions table and its files."""
    log_summary({**eval_metrics(results["metrics"]), **cost_metrics(cost, "eval_cost/")})
    set_tags(eval_question_tags(results))
    log_step_figures(cost, "batch", None, "eval")
    log_predictions(predictions)
    if files:
        log_files(*files)


def set_tags(tags: dict[str, Any]) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        retry_locked(mlflow.set_tags)({k: str(v) for k, v in tags.items()})


SKIPPED_ARTIFACT = "data/skipped_records.json"


def log_skipped(path: Path, report, extra: list[dict[str, Any]] | None = None) -> None:
    """Every record the run left out: those the loader refused (`report.skipped_records`) plus `extra` (rows of
    records skipped later, while training or evaluating). Written to `path` beside the results and logged as
    the artifact `data/skipped_records.json`; the run is tagged `skipped` (records refused while loading) and
    `skipped_held_out` (of those, held-out ones), so `tags.skipped_held_out != '0'` finds runs that lost
    questions. Call it again with more `extra` as the run goes on: file and artifact are replaced."""
    import dataclasses

    import mlflow

    from app.distributed import is_main

    if not is_main():
        return
    rows = [{**dataclasses.asdict(s), "stage": "loading"} for s in report.skipped_records] + list(extra or [])
    by_reason: dict[str, int] = {}
    for row in rows:
        by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
    payload = {"total_records": report.total, "usable_records": len(report.records),
               "skipped_by_reason": by_reason, "skipped": rows}
    write_json_atomic(Path(path), payload)
    set_tags({"skipped": len(report.skipped_records), "skipped_held_out": len(report.skipped_held_out())})
    if mlflow.active_run() is not None:
        retry_locked(mlflow.log_dict)(payload, SKIPPED_ARTIFACT)


def eval_question_tags(results: dict[str, Any]) -> dict[str, str]:
    """What `compare` checks: how many held-out questions were scored, which (hash), and how many were not."""
    return {"eval_questions": str(results["num_answered"]), "eval_questions_hash": results["questions_hash"],
            "eval_questions_skipped": str(results["num_skipped"])}


def register(adapter_dir: Path, cfg, mode: str) -> dict[str, Any] | None:
    """Register the adapter (qlora under `tracking.registered_model`, lora under the same name + `-lora`)."""
    import mlflow

    if mlflow.active_run() is None:
        return None
    from app.tracking.registry import register_adapter

    name = cfg.tracking.registered_model if mode == "qlora" else f"{cfg.tracking.registered_model}-lora"
    # Not wrapped in retry_locked as a whole: a retry after the version was created would create a second one.
    # register_adapter retries its own steps, each of which first looks for what an earlier attempt made.
    return register_adapter(adapter_dir, name)


def register_merged(model_dir: Path, cfg) -> dict[str, Any] | None:
    """Register an `export`ed merged model as a version of `<tracking.registered_model>-merged`."""
    import mlflow

    if mlflow.active_run() is None:
        return None
    from app.tracking.registry import register_adapter

    return register_adapter(model_dir, f"{cfg.tracking.registered_model}-merged")
