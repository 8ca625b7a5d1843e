"""Issue #4's profiler check: medians of forward + backward + optimizer vs the median step (goal: within 15%).

Usage: .venv/bin/python benchmarks/profiler_share.py [--repeats 3]
Trains the tiny twin for 4 epochs (batch 8, 40 synthetic clips) per repeat and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from app.data.synthetic import make_sample_set

    work = Path(tempfile.mkdtemp(prefix="profshare-"))
    make_sample_set(work / "data", clips=40, seed=0, progress=False)
    ego = str(Path(sys.executable).parent / "ego4d-ft")
    rows = []
    for i in range(args.repeats):
        out = work / f"run{i}"
        sets = [f"data.data_path={work / 'data' / 'Ego4D.json'}", f"data.video_folder={work / 'data' / 'videos'}",
                f"data.eval_ids_file={work / 'data' / 'eval_ids.txt'}", f"output_dir={out}", "tracking.enabled=false",
                "training.num_epochs=4", "training.per_device_batch_size=8", f"model.cache_dir={work / 'models'}"]
        cmd = [ego, "train", "--mode", "qlora", "--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--use-cpu"]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, env={**os.environ})
        prof = json.loads((out / "profiling" / "qlora_profiling.json").read_text())
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
