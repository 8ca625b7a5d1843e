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


def import_egoschema(questions: Path, answers: Path, videos: Path, out: Path) -> None:
    """`data import egoschema`: write the records, then say what was written and what was skipped, and why."""
    from rich.table import Table

    from app.data.egoschema import ids_file
    from app.data.egoschema import import_egoschema as convert

    report = convert(questions, answers, videos, out)
    table = Table(title=f"EgoSchema: {report.questions} questions in {questions}")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("examples", overflow="fold")
    table.add_row("[green]written[/]", str(report.written), "")
    for reason, count in report.skipped.most_common():
        table.add_row(f"[red]skipped: {reason}[/]", str(count), ", ".join(report.examples[reason]))
    console.print(table)
    console.print(f"wrote {report.written} records to {out}; skipped {sum(report.skipped.values())}", highlight=False)
    console.print(f"use it with: --set data.data_path={out} --set data.video_folder={videos} "
                  f"--set data.eval_ids_file={ids_file(out)} (every question held out, for baseline/evaluate)",
                  highlight=False, soft_wrap=True)


def validate(cfg: Config, warm: bool = False) -> DataReport:
    report = load_and_report(cfg)
    if not report.records:
        console.print("[bold red]nothing usable[/]: fix the skips above or point data.data_path elsewhere")
    elif warm:
        warm_cache(cfg, report)
    return report
