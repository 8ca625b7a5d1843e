"""Checks every pipeline runs before it starts an MLflow run or reads a weight: fail in seconds, in one line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rich.console import Console

from app.config import Config
from app.errors import UserError

console = Console(stderr=True)


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


def preflight(cfg: Config) -> None:
    """Called first thing, before torch, transformers or MLflow are imported: a bad setting costs a second."""
    from app.tracking.run import check_reachable, is_main_process, tracking_uri

    check_output_dir(Path(cfg.output_dir))
    if cfg.tracking.enabled and is_main_process():
        check_reachable(tracking_uri(cfg))
    if cfg.model.trust_remote_code:
        console.print("[yellow]model.trust_remote_code=true: code shipped with the checkpoint's tokenizer may run "
                      "(recorded as the run's trust_remote_code tag)[/]", highlight=False)
