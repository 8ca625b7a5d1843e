"""From config to loadable model: where the weights are, and which attention kernel to ask for."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from app.config import ModelConfig


def model_path(cfg: ModelConfig) -> str:
    """The path or hub name to load; a `tiny` model is built (seeded, once) into `cache_dir` first."""
    if not cfg.tiny:
        return cfg.name_or_path
    from app.models.tiny import build_tiny_llava_onevision, build_tiny_llava_ov15

    out = Path(cfg.cache_dir) / cfg.name_or_path
    build = build_tiny_llava_ov15 if cfg.family == "llava_ov15" else build_tiny_llava_onevision
    return str(build(out))


def attention_implementation(cfg: ModelConfig, on_cuda: bool) -> tuple[str, str | None]:
    """`flash_attention_2` when asked for and usable, else the configured kernel; the note says why."""
    if not cfg.use_flash_attention:
        return cfg.attn_implementation, None
    fallback = cfg.attn_implementation
    if not on_cuda:
        return fallback, f"FlashAttention asked for, but not on CUDA: using {fallback}"
    if importlib.util.find_spec("flash_attn") is None:
        return fallback, f"FlashAttention asked for, but flash-attn is not installed: using {fallback}"
    return "flash_attention_2", None
