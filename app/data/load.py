"""The data every command starts with: records loaded and checked, `<speech>` resolved, and what was usable and
what was skipped (with why) shown on the console, so no question is lost silently."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.config import Config
from app.console import console
from app.data.ego4d import DataReport, load_records
from app.data.speech import needs_asr, transcribe_speech
from app.errors import UserError


def _video_probe(cfg: Config):
    from app.data.video import probe_cached

    # The frame cache's folder also keeps each clip's probe, so the runs after the first skip probing.
    cache = Path(cfg.data.frame_cache_dir) / "probes" if cfg.data.frame_cache else None
    return lambda path: probe_cached(path, cfg.data.min_decodable_fraction, cache)


def _probe_audio(path: Path) -> None:
    from app.data.audio import probe_audio

    probe_audio(path)


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def load_data(cfg: Config) -> DataReport:
    """Records of the configured data, checked (decodable video) and with `<speech>` resolved."""
    probe = _video_probe(cfg) if cfg.data.check_decodable else None
    audio_probe = _probe_audio if cfg.data.check_decodable else None
    with _progress("checking records") as bar:
        report = load_records(cfg.data, probe=probe, progress=lambda items: bar.track(items, total=len(items)),
                              audio_probe=audio_probe)
    if cfg.data.speech_strategy == "transcript" and cfg.data.asr_model and needs_asr(report):
        with _progress(f"transcribing <speech> with {cfg.data.asr_model}") as bar:
            n = transcribe_speech(
                report, cfg.data.asr_model, progress=lambda items: bar.track(items, total=len(items))
            )
        console.print(f"transcribed <speech> in {n} records with {cfg.data.asr_model}")
    return report


def print_report(report: DataReport, title: str = "data") -> None:
    table = Table(title=f"{title}: {report.total} records")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("examples", overflow="fold")
    table.add_row("[green]usable[/]", str(len(report.records)), "")
    table.add_row("  train", str(len(report.train)), "")
    table.add_row("  held-out", str(len(report.eval)), "")
    for reason, count in report.skipped.most_common():
        table.add_row(f"[red]skipped: {reason}[/]", str(count), ", ".join(report.examples.get(reason, [])))
    for reason, count in report.warnings.most_common():
        table.add_row(f"[yellow]warning: {reason}[/]", str(count), ", ".join(report.examples.get(reason, [])))
    console.print(table)
    skipped = sum(report.skipped.values())
    lost = report.skipped_held_out()
    console.print(
        f"usable: {len(report.records)} of {report.total} records "
        f"(train {len(report.train)}, held-out {len(report.eval)}); skipped: {skipped}"
        + (f" ({len(lost)} held-out)" if lost else ""),
        highlight=False,
    )
    if lost:  # named one by one: the table shows only a few examples per reason
        from rich.markup import escape

        shown = "; ".join(s.describe() for s in lost[:10]) + (" …" if len(lost) > 10 else "")
        # escape: describe() writes "[file]", which rich would read as a (closing) style tag.
        console.print(f"[yellow]held-out records left out, their questions cannot be scored: {len(lost)}[/] "
                      f"({escape(shown)})", highlight=False, soft_wrap=True)
    if report.unknown_ids:
        shown = ", ".join(report.unknown_ids[:5]) + (" …" if len(report.unknown_ids) > 5 else "")
        console.print(f"[yellow]video_ids_file: {len(report.unknown_ids)} unknown ids[/] ({shown})", highlight=False)
    if report.unknown_eval_ids:
        shown = ", ".join(report.unknown_eval_ids[:5])
        console.print(
            f"[yellow]eval_ids_file: {len(report.unknown_eval_ids)} unknown ids[/] ({shown})", highlight=False
        )


def load_and_report(cfg: Config) -> DataReport:
    """What `baseline`, `evaluate` and `train` start with: the data, checked, and its report on the console."""
    report = load_data(cfg)
    print_report(report, title=str(cfg.data.data_path))
    return report


def warm_cache(cfg: Config, report: DataReport) -> dict[str, int]:
    """Decode every usable clip once into the frame cache, so the first epoch reads it like the later ones.

    A clip that fails here (damage the probe could not see) becomes a named skip of every record using it,
    so the usable count printed after it is what training and evaluation will really get."""
    import os

    from rich.markup import escape

    from app.data.ego4d import TRUNCATED, UNDECODABLE
    from app.data.frame_cache import warm

    if not cfg.data.frame_cache:
        raise UserError("--warm-cache: the frame cache is off; drop --set data.frame_cache=false")
    videos = [r.video for r in report.records]
    workers = max(1, min(cfg.training.dataloader_workers, os.cpu_count() or 1))
    with _progress(f"warming the frame cache ({workers} process{'es' if workers > 1 else ''})") as bar:
        task = bar.add_task("warm", total=len(set(videos)))
        counts, failures = warm(videos, cfg.data, workers=workers, on_done=lambda _: bar.advance(task))
    console.print(
        f"frame cache {cfg.data.frame_cache_dir}: written {counts['written']}, already there {counts['hit']}, "
        f"failed {counts['failed']}" + (f", not storable {counts['decoded']}" if counts["decoded"] else ""),
        highlight=False,
    )
    if failures:
        for record in [r for r in report.records if r.video in failures]:
            reason = failures[record.video]
            report.records.remove(record)
            report.skip(TRUNCATED if reason.startswith("truncated:") else UNDECODABLE, record.id, record.video,
                        split=record.split, detail=reason)
            console.print(f"[red]skipped {escape(record.id)}[/] ({escape(str(record.video))}): {escape(reason)}",
                          highlight=False, soft_wrap=True)
        console.print(
            f"usable after warming the cache: {len(report.records)} of {report.total} records "
            f"(train {len(report.train)}, held-out {len(report.eval)}); skipped: {sum(report.skipped.values())}",
            highlight=False,
        )
    return counts
