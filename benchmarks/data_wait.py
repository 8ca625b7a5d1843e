"""P2: the share of training step time spent waiting for data, tiny QLoRA on CPU with 2 loader workers (goal <= 5%).

Usage: .venv/bin/python benchmarks/data_wait.py [--repeats 3] [--epochs 30]

Each repeat trains the tiny twin through the CLI (the demo: 40 synthetic clips, batch 8, 30 epochs) twice: with
the frame cache (a fresh folder, so epoch 1 decodes and fills it, as a first run does) and without it (every
epoch decodes). The share is the sum of the profiler's data-wait seconds over the sum of its step seconds
(see `shares`).
Prints one table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import sample_sets, train_tiny
from rich.console import Console
from rich.table import Table


def shares(prof: dict, epochs: int) -> tuple[float, float, float, float]:
    """Data-wait share of step time: whole run; without step 1 (loader workers starting); steps inside an
    epoch only (the Trainer re-iterates the DataLoader each epoch, so an epoch's first batch is built while
    the model waits); and the median wait in ms."""
    wait, step = prof["raw"]["steps"]["data_wait"], prof["raw"]["steps"]["step"]
    per_epoch = len(step) // epochs
    inner = [i for i in range(len(step)) if i % per_epoch]
    return (sum(wait) / sum(step), sum(wait[1:]) / sum(step[1:]),
            sum(wait[i] for i in inner) / sum(step[i] for i in inner), statistics.median(wait) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30, help="the demo's (configs/tiny_cpu.yaml)")
    ap.add_argument("--clips", type=int, default=40)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="p2-"))
    base = sample_sets(work, args.clips)
    common = [*base, f"training.num_epochs={args.epochs}", "training.per_device_batch_size=8",
              "training.dataloader_workers=2", "training.save_steps=100000"]
    settings = {"frame cache on": ["data.frame_cache=true"], "frame cache off": ["data.frame_cache=false"]}
    results: dict[str, list[tuple[float, ...]]] = {k: [] for k in settings}
    for r in range(args.repeats):
        for name, extra in settings.items():
            sets = [*common, *extra, f"data.frame_cache_dir={work / f'frames-{r}'}"]
            results[name].append(shares(train_tiny(work / f"{name.replace(' ', '-')}-{r}", sets), args.epochs))
    table = Table(title=f"P2: data wait / step time, tiny QLoRA, CPU, 2 loader workers, {args.epochs} epochs")
    for col in ("setting", "whole run (median)", "without step 1", "inside epochs", "median wait (ms)",
                "whole-run runs"):
        table.add_column(col)
    for name, rows in results.items():
        med = [statistics.median(r[k] for r in rows) for k in range(4)]
        goal = " (goal <= 5%)" if name == "frame cache on" else ""
        table.add_row(name, f"{med[0]:.1%}{goal}", f"{med[1]:.1%}", f"{med[2]:.1%}", f"{med[3]:.2f}",
                      ", ".join(f"{r[0]:.1%}" for r in rows))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
