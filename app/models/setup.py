"""From config to loadable model: where the weights are, and which attention kernel to ask for."""

from __future__ import annotations

import importlib
from pathlib import Path

from app.config import ModelConfig

# Fallback notes already handed out in this process: baseline/train/evaluate may each ask (train loads the base again
# to evaluate its adapter), and the user needs to read the reason once, not once per load.
_NOTES_GIVEN: set[str] = set()


def model_path(cfg: ModelConfig) -> str:
    """The path or hub name to load; a `tiny` model is built (seeded, once) into `cache_dir` first."""
    if not cfg.tiny:
        return cfg.name_or_path
    from app.models.tiny import build_tiny_llava_onevision, build_tiny_llava_ov15

    if cfg.family != "llava_ov15":
        return str(build_tiny_llava_onevision(Path(cfg.cache_dir) / cfg.name_or_path))
    width = cfg.tiny_vision_width
    name = cfg.name_or_path if width == 32 else f"{cfg.name_or_path}-vit{width}"  # one folder per twin size
    return str(build_tiny_llava_ov15(Path(cfg.cache_dir) / name, vision_width=width))


def _flash_attn_unusable() -> str | None:
    """Why flash-attn cannot be used here, or None. Only called on CUDA: flash-attn is the optional `gpu` extra."""
    try:
        importlib.import_module("flash_attn")
    except ImportError:
        return "flash-attn is not installed (pip install -e '.[gpu]')"
    except Exception as exc:  # a wheel built for another torch/CUDA fails at import with errors of many types
        return f"flash-attn failed to import ({type(exc).__name__}: {exc})"
    return None


def attention_implementation(cfg: ModelConfig, on_cuda: bool) -> tuple[str, str | None]:
    """`flash_attention_2` when asked for and usable, else the configured kernel.

    The note says why it fell back; it is given once per process (None on later calls with the same reason).
    flash-attn is imported only on CUDA, so CPU runs neither need the `gpu` extra nor load it.
    """
    if not cfg.use_flash_attention:
        return cfg.attn_implementation, None
    fallback = cfg.attn_implementation
    reason = "not on CUDA" if not on_cuda else _flash_attn_unusable()
    if reason is None:
        return "flash_attention_2", None
    note = f"FlashAttention asked for, but {reason}: using {fallback}"
    if note in _NOTES_GIVEN:
        return fallback, None
    _NOTES_GIVEN.add(note)
    return fallback, note
