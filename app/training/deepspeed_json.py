"""A DeepSpeed JSON read and checked against the run before anything heavy starts (see `app.preflight`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.config import Config
from app.errors import UserError


def read_deepspeed(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"{path}: DeepSpeed config not found")
    try:
        ds = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(ds, dict):
        raise UserError(f"{path}: expected a JSON object")
    return ds


def zero_stage(ds: dict[str, Any] | None) -> int:
    return int(((ds or {}).get("zero_optimization") or {}).get("stage", 0))


def check_combination(cfg: Config, mode: str, ds: dict[str, Any], path: Path) -> None:
    zero = ds.get("zero_optimization", {}) or {}
    if mode == "qlora" and zero_stage(ds) == 3 and (zero.get("offload_param") or {}).get("device", "none") != "none":
        # bitsandbytes' packed 4-bit weights cannot be partitioned to CPU/NVMe by ZeRO-3's parameter offload.
        raise UserError(f"{path}: QLoRA cannot use zero_optimization.offload_param; remove it or use --mode lora")
    if cfg.use_cpu and ds.get("fp16", {}).get("enabled") is True:
        raise UserError(f"{path}: fp16.enabled=true needs a GPU; set it to \"auto\" or false for --use-cpu")
