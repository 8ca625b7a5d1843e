"""Every check that can run before a command starts its MLflow run or reads a weight: fail in seconds, in one
line, and leave no FAILED run behind. Imported first thing by each pipeline, before torch or MLflow load."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from app.config import Config
from app.console import stderr
from app.errors import UserError

TRAIN_MODES = ("qlora", "lora")


def check_output_dir(path: Path) -> None:
    """Create `path` and write a probe file in it: permissions, read-only mounts and a file in the way all
    show up here rather than after an hour of training."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"output_dir {path}: not writable ({reason}); set output_dir to a folder you can write") \
            from None


def refuse_deepspeed_for_evaluation(command: str, deepspeed: Path | None) -> None:
    """`baseline`/`evaluate` take no DeepSpeed config: said in one line rather than silently ignored.

    Evaluation is data-parallel: under torchrun each process holds the whole model and answers its share of the
    questions, so N GPUs evaluate N times faster, which ZeRO-3 sharded generation (one token per collective
    over every GPU) would not. The 8B model in bf16 needs ~17 GB per GPU (benchmarks/RESULTS.md).
    """
    if deepspeed is not None:
        raise UserError(
            f"{command} --deepspeed {deepspeed}: evaluation does not run under DeepSpeed; drop --deepspeed. Each "
            "process holds the whole model (8B in bf16: ~17 GB per GPU) and `torchrun --nproc_per_node N` shares "
            "the questions over N GPUs"
        )


def preflight(cfg: Config, mode: str | None = None, deepspeed: Path | None = None,
              needs_store: bool = False) -> dict[str, Any] | None:
    """The checks, in the order a user would fix them; returns the DeepSpeed config (training only) once read.

    `mode` is the training mode (None for commands that do not train). `needs_store`: the command reads the
    tracking store even with tracking off (compare, `evaluate --model models:/...`).
    """
    from app.distributed import is_main
    from app.tracking.run import check_reachable, tracking_uri
    from app.training.deepspeed_json import check_combination, read_deepspeed

    if mode is not None and mode not in TRAIN_MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(TRAIN_MODES)}")
    ds = read_deepspeed(deepspeed)
    if ds is not None:
        check_combination(cfg, mode or "qlora", ds, deepspeed)
    check_output_dir(Path(cfg.output_dir))
    if (cfg.tracking.enabled or needs_store) and is_main():
        check_reachable(tracking_uri(cfg))
    if cfg.model.trust_remote_code:
        stderr.print("[yellow]model.trust_remote_code=true: code shipped with the checkpoint's tokenizer may run "
                     "(recorded as the run's trust_remote_code tag)[/]", highlight=False)
    return ds
