"""Shared by the benchmark scripts: a synthetic set and a tiny-model training run through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny_cpu.yaml"


def sample_sets(work: Path, clips: int = 40) -> list[str]:
    """Write a synthetic set under ``work/data`` and return the ``--set`` values that point a run at it."""
    from app.data.synthetic import make_sample_set

    data = work / "data"
    if not (data / "Ego4D.json").is_file():
        make_sample_set(data, clips=clips, seed=0, progress=False)
    return [f"data.data_path={data / 'Ego4D.json'}", f"data.video_folder={data / 'videos'}",
            f"data.eval_ids_file={data / 'eval_ids.txt'}", f"model.cache_dir={work / 'models'}",
            f"data.frame_cache_dir={work / 'frames'}"]


def train_tiny(out: Path, sets: list[str], mode: str = "qlora") -> dict[str, Any]:
    """`ego4d-ft train` on the tiny config (no tracking); returns its profiling JSON."""
    ego = str(Path(sys.executable).parent / "ego4d-ft")
    cmd = [ego, "train", "--mode", mode, "--config", str(TINY_CONFIG), "--use-cpu"]
    for s in [*sets, f"output_dir={out}", "tracking.enabled=false"]:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, env={**os.environ})
    return json.loads((out / "profiling" / f"{mode}_profiling.json").read_text())
