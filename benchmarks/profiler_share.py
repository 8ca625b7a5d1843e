"""Issue #4's profiler check: medians of forward + backward + optimizer vs the median step (goal: within 15%).

Usage: .venv/bin/python benchmarks/profiler_share.py [--repeats 3]
Trains the tiny twin for 4 epochs (batch 8, 40 synthetic clips) per repeat and prints one table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import sample_sets, train_tiny
from rich.console import Console
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profshare-"))
    base = sample_sets(work)
    rows = []
    for i in range(args.repeats):
        prof = train_tiny(work / f"run{i}", [*base, "training.num_epochs=4", "training.per_device_batch_size=8"])
        med = {r: prof[f"{r}_seconds"]["median"] for r in ("step", "forward", "backward", "optimizer", "data_wait")}
        rows.append((med, (med["forward"] + med["backward"] + med["optimizer"]) / med["step"]))
    table = Table(title="Profiler: forward + backward + optimizer vs step (medians, ms), tiny QLoRA, CPU")
    for col in ("run", "step", "forward", "backward", "optimizer", "data wait", "share (goal >= 0.85)"):
        table.add_column(col, justify="right")
    for i, (med, share) in enumerate(rows):
        table.add_row(str(i + 1), *(f"{med[k] * 1000:.1f}" for k in ("step", "forward", "backward", "optimizer",
                                                                      "data_wait")), f"{share:.3f}")
    table.add_row("median", "", "", "", "", "", f"{statistics.median(s for _, s in rows):.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
