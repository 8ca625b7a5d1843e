"""P3: our training step vs a bare HF Trainer + PEFT step on the same tiny model and batches: the cost of our
profiler, MLflow step logging and progress bar (goal <= 1.03x).

Usage: .venv/bin/python benchmarks/trainer_overhead.py [--repeats 3] [--steps 40]

Both sides get the same 4-bit tiny twin with the same LoRA (loaded fresh, same seed), the same
TrainingArguments (`training_arguments` of the pipeline), and the same pre-encoded samples in the same order
with no loader workers, so nothing but the loop differs. Ours: `ProfiledTrainer` + `ProfilerCallback` logging
each step to an active MLflow run (a throwaway SQLite store) + `RichProgressCallback`. Bare:
`transformers.Trainer` as it comes (less the log printer, which ours drops too). A one-line callback on both
stamps each `on_step_end`; the step time is the median interval, the first steps (warm-up) left out.
Order alternates between repeats. Prints one table; ratios from the same repeat.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import TINY_CONFIG, sample_sets
from rich.console import Console
from rich.table import Table

WARMUP = 5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import torch
    from torch.utils.data import Dataset
    from transformers import PrinterCallback, Trainer, TrainerCallback

    from app.config import load_config
    from app.data.dataset import VideoQADataset
    from app.data.ego4d import load_records
    from app.data.padding import PaddingCollator
    from app.models.setup import load_for_training
    from app.profiler import Profiler
    from app.quiet import quiet_third_party
    from app.tracking import log as track
    from app.training.arguments import training_arguments
    from app.training.hooks import ProfiledTrainer, ProfilerCallback, RichProgressCallback

    quiet_third_party()
    work = Path(tempfile.mkdtemp(prefix="p3-"))
    cfg = load_config(TINY_CONFIG, [*sample_sets(work), "training.dataloader_workers=0", "training.num_epochs=1",
                                    "training.save_steps=1000000", "training.per_device_batch_size=8"])
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    mlflow.set_experiment("p3")

    class Encoded(Dataset):
        """Samples encoded once, handed out in a fixed order, as many as the steps need."""

        def __init__(self, samples: list, n: int) -> None:
            self.samples, self.n = samples, n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int):
            return self.samples[i % len(self.samples)]

    class Stamp(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter())

    def run(ours: bool) -> float:
        torch.manual_seed(0)
        model, processor, _ = load_for_training(cfg, "qlora")
        raw = VideoQADataset(load_records(cfg.data).train, cfg.data, processor)
        data = Encoded([raw[i] for i in range(len(raw))], args.steps * cfg.training.per_device_batch_size)
        targs = training_arguments(cfg, work / "out", None, on_cuda=False)
        targs.data_seed = targs.seed
        common = dict(model=model, args=targs, train_dataset=data,
                      data_collator=PaddingCollator(pad_token_id=processor.tokenizer.pad_token_id))
        stamp = Stamp()
        if ours:
            trainer = ProfiledTrainer(**common, profiler=Profiler("qlora", use_cuda=False))
            trainer.remove_callback(PrinterCallback)
            trainer.add_callback(ProfilerCallback(trainer, on_step=track.log_step))
            trainer.add_callback(RichProgressCallback(trainer, Console(file=io.StringIO())))
        else:
            # The bare loop gets the index column dropped by the collator's caller, as our training_step does.
            class Bare(Trainer):
                def training_step(self, model, inputs, num_items_in_batch=None):
                    inputs.pop("index", None)
                    return super().training_step(model, inputs, num_items_in_batch)

            trainer = Bare(**common)
            trainer.remove_callback(PrinterCallback)  # printing log dicts is not what is compared
        trainer.get_train_dataloader = _sequential(trainer)  # same order on both sides
        trainer.add_callback(stamp)
        with mlflow.start_run() if ours else _nothing():
            trainer.train()
        gaps = [b - a for a, b in zip(stamp.times, stamp.times[1:], strict=False)][WARMUP:]
        return statistics.median(gaps)

    ours_s, bare_s, ratios = [], [], []
    for r in range(args.repeats):
        order = (True, False) if r % 2 == 0 else (False, True)
        got = {which: run(which) for which in order}
        ours_s.append(got[True])
        bare_s.append(got[False])
        ratios.append(got[True] / got[False])
    table = Table(title=f"P3: step time, ours vs bare Trainer + PEFT, tiny QLoRA, CPU, batch 8, {args.steps} steps")
    for col in ("loop", "median step (ms)", "runs (ms)"):
        table.add_column(col)
    table.add_row("ours (profiler + MLflow + progress)", f"{statistics.median(ours_s) * 1000:.1f}",
                  ", ".join(f"{x * 1000:.1f}" for x in ours_s))
    table.add_row("bare HF Trainer + PEFT", f"{statistics.median(bare_s) * 1000:.1f}",
                  ", ".join(f"{x * 1000:.1f}" for x in bare_s))
    table.add_row("ratio ours / bare", f"{statistics.median(ratios):.3f}x (goal <= 1.03x)",
                  ", ".join(f"{x:.3f}" for x in ratios))
    Console(width=160).print(table)


def _sequential(trainer):
    """The Trainer's own DataLoader, but reading the dataset in order (no shuffling) on either side."""
    from torch.utils.data import DataLoader

    def get_train_dataloader():
        return DataLoader(trainer.train_dataset, batch_size=trainer.args.per_device_train_batch_size,
                          collate_fn=trainer.data_collator, shuffle=False, num_workers=0)

    return get_train_dataloader


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
