"""Running `ego4d-ft` in tests, the one place that knows how: as users do (a subprocess of the installed script)
or in the test's own process (the same typer app and code path, without a new interpreter and the ~13 s of
torch/transformers/peft/mlflow imports each subprocess pays).

Use the subprocess where the process itself is under test (exit on a signal, a kill, torchrun, Slurm, stderr
as a terminal shows it, import-time behaviour); use `ego_here` everywhere else. Importable from every test
folder: the root conftest puts tests/ on sys.path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"
EGO = str(Path(sys.executable).parent / "ego4d-ft")


def tiny_sets(sample: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    """`--set` arguments pointing a tiny run at a sample set, a model cache and an output folder (nothing of it
    inside the repository)."""
    sets = [
        f"data.data_path={sample / 'Ego4D.json'}", f"data.video_folder={sample / 'videos'}",
        f"data.eval_ids_file={sample / 'eval_ids.txt'}", f"model.cache_dir={cache}", f"output_dir={out}",
        f"data.frame_cache_dir={cache / 'frames'}",
        "training.per_device_batch_size=4", *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


def ego(*args: str, env: dict | None = None, timeout: int = 600,
        launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """`ego4d-ft ARGS` in a new process, as a user runs it; `launcher` replaces the script (e.g. torchrun, or a
    driver that kills the run midway)."""
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([*(launcher or [EGO]), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def ego_here(*args: str) -> Ran:
    """`ego4d-ft ARGS` in this process: exit code, stdout and stderr as the CLI gives them. An exception the CLI
    did not turn into a one-line error is raised here with its traceback, as a bug should be."""
    from typer.testing import CliRunner

    from app.cli import app

    # A run given `--set tracking.uri=...` points MLflow there, and MLflow's set_tracking_uri also sets
    # MLFLOW_TRACKING_URI, which every later run and subprocess of this test process would inherit: put it back.
    store = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        if store is not None and "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(store)
        if store is not None:
            os.environ["MLFLOW_TRACKING_URI"] = store
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)
