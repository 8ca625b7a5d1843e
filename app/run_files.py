"""Every path a command writes, in one place: train, baseline, evaluate and compare (and the tests) ask here.

Under `output_dir`:
  training/{mode}/final_model/            the adapter (+ ADAPTER_META: how it was trained, how to load it back)
  training/{mode}/checkpoints/            Trainer checkpoints (--resume)
  training/{mode}/training_results.json   what train measured; eval_results.json, eval_predictions.jsonl beside it
  training/{mode}/skipped_records.json    every record the run left out, with why
  training/baseline/baseline_results.json, predictions.jsonl, skipped_records.json
  profiling/{kind}_profiling.json         kind: baseline | qlora | lora | qlora_eval | lora_eval | evaluate
  report/                                 compare's report.md, report.html and charts
`evaluate --model` writes evaluate_results.json, evaluate_predictions.jsonl and evaluate_skipped_records.json in
the adapter's run folder (or output_dir/evaluate/<ref> for a registry reference). MLflow artifacts keep these
file names, which is how `compare` finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ADAPTER_META = "ego4d_ft.json"
TRAINING_RESULTS = "training_results.json"


def profiling_name(kind: str) -> str:
    return f"{kind}_profiling.json"


@dataclass(frozen=True)
class EvalFiles:
    """What one held-out evaluation writes: `{name}_results.json`, its predictions, its skips and its cost."""

    folder: Path
    name: str  # baseline | eval | evaluate: the results file's prefix and the progress bar's label
    predictions: Path
    skipped: Path
    profiling: Path

    @property
    def results(self) -> Path:
        return self.folder / f"{self.name}_results.json"

    def partial_log(self, rank: int, world: int) -> Path:
        """The resumable per-batch log; one per rank, so ranks append concurrently and each shard resumes."""
        suffix = f".rank{rank}of{world}" if world > 1 else ""
        return self.folder / f".{self.name}_predictions{suffix}.partial.jsonl"


@dataclass(frozen=True)
class RunFiles:
    output_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))  # a config's str works too

    def profiling(self, kind: str) -> Path:
        return self.output_dir / "profiling" / profiling_name(kind)

    # --- train ------------------------------------------------------------------------------------------------------
    def training_dir(self, mode: str) -> Path:
        return self.output_dir / "training" / mode

    def final_model(self, mode: str) -> Path:
        return self.training_dir(mode) / "final_model"

    def checkpoints(self, mode: str) -> Path:
        return self.training_dir(mode) / "checkpoints"

    def training_results(self, mode: str) -> Path:
        return self.training_dir(mode) / TRAINING_RESULTS

    def skipped(self, mode: str) -> Path:
        return self.training_dir(mode) / "skipped_records.json"

    def train_eval(self, mode: str) -> EvalFiles:
        folder = self.training_dir(mode)
        return EvalFiles(folder, "eval", folder / "eval_predictions.jsonl", self.skipped(mode),
                         self.profiling(f"{mode}_eval"))

    # --- baseline and evaluate --------------------------------------------------------------------------------------
    def baseline(self) -> EvalFiles:
        folder = self.training_dir("baseline")
        return EvalFiles(folder, "baseline", folder / "predictions.jsonl", folder / "skipped_records.json",
                         self.profiling("baseline"))

    def evaluate(self, model_ref: str) -> EvalFiles:
        """Beside the adapter for a folder; under output_dir/evaluate/ for `models:/...` and `runs:/...`."""
        if model_ref.startswith(("models:/", "runs:/")):
            folder = self.output_dir / "evaluate" / model_ref.split(":/", 1)[1].replace("/", "_").replace("@", "_")
        else:
            folder = Path(model_ref).parent
        return EvalFiles(folder, "evaluate", folder / "evaluate_predictions.jsonl",
                         folder / "evaluate_skipped_records.json", self.profiling("evaluate"))

    # --- compare ----------------------------------------------------------------------------------------------------
    def report_dir(self) -> Path:
        return self.output_dir / "report"
