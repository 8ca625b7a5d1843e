"""`data sample` and `data validate`: make the synthetic set, and tell users what of their data is usable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Config
from app.console import console
from app.data.ego4d import DataReport
from app.data.load import load_and_report, warm_cache
from app.errors import UserError


def sample(out: Path, clips: int = 40, seed: int = 0, **options: Any) -> None:
    """`make_sample_set` with the CLI's options (size, frames, num_eval, audio, workers); a bad value is one line."""
    from app.data.synthetic import make_sample_set

    try:
        summary = make_sample_set(out, clips=clips, seed=seed, **options)
    except ValueError as exc:
        raise UserError(f"data sample: {exc}") from None
    console.print(
        f"wrote {summary.num_records} records ({summary.num_train} train, {summary.num_eval} held-out) "
        f"to {summary.data_path}; clips in {summary.video_folder}"
    )
    console.print(
        f"use it with: --set data.data_path={summary.data_path} --set data.video_folder={summary.video_folder} "
        f"--set data.eval_ids_file={Path(out) / 'eval_ids.txt'}",
        highlight=False,
        soft_wrap=True,
    )


def validate(cfg: Config, warm: bool = False) -> DataReport:
    report = load_and_report(cfg)
    if not report.records:
        console.print("[bold red]nothing usable[/]: fix the skips above or point data.data_path elsewhere")
    elif warm:
        warm_cache(cfg, report)
    return report
