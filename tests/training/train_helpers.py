"""Running the installed `ego4d-ft` as users do, for the training tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"
EGO = str(Path(sys.executable).parent / "ego4d-ft")


def ego(*args: str, sets: list[str] = (), timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [EGO, *args, "--config", str(TINY), "--use-cpu"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "COLUMNS": "200", "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
