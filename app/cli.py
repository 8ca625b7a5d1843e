"""`ego4d-ft` command line: parses arguments and calls into app.pipelines, nothing else.

Heavy libraries (torch, transformers, decord, mlflow) are imported inside the commands so that
`ego4d-ft --help` stays well under a second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Fine-tune LLaVA-OneVision-1.5 on Ego4D-format video QA; every run tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make and check Ego4D-format data.", no_args_is_help=True)
model_app = typer.Typer(help="Look at the model before spending GPU hours on it.", no_args_is_help=True)
import_app = typer.Typer(help="Convert a public annotation format into this project's Ego4D format.",
                         no_args_is_help=True)
data_app.add_typer(import_app, name="import")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config (default configs/training_config.yaml).")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set training.num_epochs=1 (repeatable).")
]
DeepSpeedOpt = Annotated[Path | None, typer.Option("--deepspeed", help="DeepSpeed JSON config (ZeRO-2/3).")]
EvalDeepSpeedOpt = Annotated[Path | None, typer.Option(
    "--deepspeed", help="Refused with the reason: evaluation shares the questions over torchrun's processes instead.")]
CpuOpt = Annotated[bool, typer.Option("--use-cpu", help="Run on CPU even when a GPU is present.")]


def _fail(message: str, code: int = 1) -> None:
    from app.console import stderr

    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Turn the project's user-facing errors into one line and a non-zero exit, never a traceback."""
    from app.errors import UserError

    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _config(config: Path | None, overrides: list[str] | None, use_cpu: bool = False):
    from app.config import load_config

    cfg = _run(load_config, config, overrides)
    if use_cpu:
        cfg.use_cpu = True
    return cfg


@app.command()
def baseline(
    config: ConfigOpt = None, set_: SetOpt = None, deepspeed: EvalDeepSpeedOpt = None, use_cpu: CpuOpt = False
):
    """M0: evaluate the base model on the held-out split (no training)."""
    from app.pipelines.evaluate import baseline as run_baseline

    _run(run_baseline, _config(config, set_, use_cpu), deepspeed=deepspeed)


@app.command()
def train(
    mode: Annotated[str, typer.Option(help="qlora (M1: 4-bit NF4 base + LoRA) or lora (bf16 base).")] = "qlora",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    deepspeed: DeepSpeedOpt = None,
    use_cpu: CpuOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint.")] = False,
):
    """M1: QLoRA (or LoRA) fine-tuning, then evaluation of the adapter."""
    from app.pipelines.train import train as run_training

    cfg = _config(config, set_, use_cpu)
    _run(run_training, cfg, mode=mode, deepspeed=deepspeed, resume=resume)


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Option("--model", help="Adapter dir, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/PATH.")
    ],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    deepspeed: EvalDeepSpeedOpt = None,
    use_cpu: CpuOpt = False,
):
    """Evaluate a trained adapter on the held-out split."""
    from app.pipelines.evaluate import evaluate as run_evaluate

    _run(run_evaluate, _config(config, set_, use_cpu), model, deepspeed=deepspeed)


@app.command()
def compare(
    baseline_run: Annotated[
        str | None, typer.Option("--baseline", help="MLflow run id (default: latest baseline).")
    ] = None,
    candidate: Annotated[str | None, typer.Option("--candidate", help="MLflow run id (default: latest qlora).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: results/report).")] = None,
    allow_different_questions: Annotated[bool, typer.Option(
        "--allow-different-questions",
        help="Compare runs scored on different held-out questions (the report then carries a warning).",
    )] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Write the M0-vs-M1 report (markdown + html) and log it to MLflow."""
    from app.pipelines.compare import compare as run_compare

    _run(run_compare, _config(config, set_), baseline_run=baseline_run, candidate_run=candidate, out=out,
         allow_different_questions=allow_different_questions)


@app.command()
def ask(
    video: Annotated[Path, typer.Argument(help="The clip to ask about (any format `data validate` accepts).")],
    question: Annotated[str, typer.Argument(help="The question; <speech> marks where --audio's words go.")],
    model: Annotated[str, typer.Option(
        "--model", help="base, an adapter dir, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/PATH.")] = "base",
    audio: Annotated[Path | None, typer.Option("--audio", help="Audio for <speech> (transcript strategy).")] = None,
    base_too: Annotated[bool, typer.Option("--base-too", help="Also print the base model's answer.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    use_cpu: CpuOpt = False,
):
    """Answer one question about one clip, streamed as it is generated (frames and prompt as in training)."""
    from app.pipelines.ask import ask as run_ask

    _run(run_ask, _config(config, set_, use_cpu), model, video, question, audio=audio, base_too=base_too)


@app.command()
def export(
    model: Annotated[str, typer.Option(
        "--model", help="Adapter dir, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/ID/PATH.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the merged model into.")],
    register: Annotated[bool, typer.Option("--register", help="Register the merged model (NAME-merged).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Merge the adapter into its full-precision base and save a plain checkpoint (hub layout, safetensors)."""
    from app.pipelines.export import export as run_export

    _run(run_export, _config(config, set_), model, out, register=register)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000, config: ConfigOpt = None, set_: SetOpt = None
):
    """Open the MLflow UI on the project's tracking store."""
    from app.pipelines.compare import ui as run_ui

    _run(run_ui, _config(config, set_), port)


@data_app.command("sample")
def data_sample(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the synthetic set into.")] = Path("data/sample"),
    clips: Annotated[int, typer.Option(min=4, help="Number of clips (>= 4 keeps answers balanced).")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same set.")] = 0,
    size: Annotated[int, typer.Option(min=32, help="Frame side in pixels (even).")] = 112,
    frames: Annotated[int, typer.Option(min=2, help="Frames per clip (at 8 fps).")] = 16,
    held_out: Annotated[int | None, typer.Option(min=1, help="Held-out clips [default: 20% of the clips].")] = None,
    audio: Annotated[bool, typer.Option(help="Tone tracks, separate audio files and spoken questions.")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Processes writing clips (same files for any number).")] = 1,
    object_size: Annotated[float, typer.Option(help="The object's radius as a share of the frame side.")] = 0.16,
    mcq: Annotated[bool, typer.Option("--mcq", help="Ask every question as 4-way multiple choice (letters).")] = False,
):
    """Write a synthetic Ego4D-format set: real H.264 mp4 clips with audio, a held-out split."""
    from app.pipelines.data import sample

    _run(sample, out, clips=clips, seed=seed, size=size, frames=frames, num_eval=held_out, audio=audio,
         workers=workers, object_size=object_size, mcq=mcq)


@import_app.command("egoschema")
def data_import_egoschema(
    questions: Annotated[Path, typer.Option("--questions", help="EgoSchema questions.json.")],
    answers: Annotated[Path, typer.Option("--answers", help="Answers {q_uid: index}, e.g. subset_answers.json.")],
    videos: Annotated[Path, typer.Option("--videos", help="Folder holding <q_uid>.mp4 (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", help="Records file to write (Ego4D format).")],
):
    """EgoSchema multiple choice -> records with lettered options (lmms-eval's prompt), answers as letters."""
    from app.pipelines.data import import_egoschema

    _run(import_egoschema, questions, answers, videos, out)


@data_app.command("validate")
def data_validate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    warm_cache: Annotated[
        bool, typer.Option("--warm-cache", help="Then decode every usable clip into the frame cache.")
    ] = False,
):
    """Load the configured data and count usable records and skips by reason; exit 1 if none usable."""
    from app.pipelines.data import validate

    cfg = _config(config, set_)
    report = _run(validate, cfg, warm=warm_cache)
    if not report.records:
        raise typer.Exit(1)


@model_app.command("inspect")
def model_inspect(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    mode: Annotated[str, typer.Option(help="baseline, qlora or lora.")] = "qlora",
    meta: Annotated[bool, typer.Option("--meta", help="Build on the meta device: no weights needed.")] = False,
):
    """Parameters (total/trainable), 4-bit layers, vision tokens per clip, memory estimate."""
    from app.pipelines.model import inspect

    if mode not in ("baseline", "qlora", "lora"):
        _fail(f"--mode {mode!r}: expected baseline, qlora or lora")
    _run(inspect, _config(config, set_), mode=mode, meta=meta)


def main() -> None:
    # Typer maps `--set` to a parameter named `set_`; keep the public flag name.
    sys.exit(app())


if __name__ == "__main__":
    main()
