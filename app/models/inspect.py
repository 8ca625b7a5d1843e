"""What a model costs before running it: parameters, 4-bit layers, vision tokens per clip, a memory estimate.

`inspect_model` returns the figures as a dict; `ego4d-ft model inspect` (app/pipelines/model.py) fills its
arguments from the config and prints them as a table.

``meta=True`` builds the architecture on the meta device from ``config.json`` (no weights are read). For
llava_ov15, no path or the default hub name means the shipped 8B-Instruct config instead of a download, and a
path may also be a config JSON file itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .loading import FAMILY_SPECS, lora_target_modules

SHIPPED_8B_CONFIG = Path(__file__).parent / "llava_ov15" / "configs" / "llava_ov15_8b_instruct.json"
DEFAULT_8B_NAME = "lmms-lab/LLaVA-OneVision-1.5-8B-Instruct"
# Model table of the github.com/EvolvingLMMs-Lab/LLaVA-OneVision-1.5 README:
# "LLaVA-OV-1.5-8B-Instruct | 0.3B vision | 8.2B language | 8.5B total".
PUBLISHED_TOTAL_8B = 8.5e9
_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
_NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 / 4 * 1 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax per 64 + fp32 per 256 blocks


def _config_for(path: str | None, family: str):
    if family == "llava_ov15":
        from .llava_ov15 import LlavaOV15Config

        if path is None or path == DEFAULT_8B_NAME or not (Path(path) / "config.json").exists():
            if path not in (None, DEFAULT_8B_NAME) and not Path(path).is_file():
                raise FileNotFoundError(f"no config.json under {path}")
            return LlavaOV15Config.from_json_file(str(path if path and Path(path).is_file() else SHIPPED_8B_CONFIG))
        return LlavaOV15Config.from_pretrained(path)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=False)


def build_on_meta(path: str | None = None, family: str = "llava_ov15") -> nn.Module:
    """The architecture with no storage (``torch.device('meta')``): shapes and counts only."""
    config = _config_for(path, family)
    with torch.device("meta"):
        if family == "llava_ov15":
            from .llava_ov15 import LlavaOV15ForConditionalGeneration

            return LlavaOV15ForConditionalGeneration(config)
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration(config)


def logical_numel(p: torch.Tensor) -> int:
    """Parameters a tensor stands for: a bitsandbytes 4-bit weight stores two per byte (its numel is half)."""
    state = getattr(p, "quant_state", None)
    return int(math.prod(state.shape)) if state is not None else p.numel()


def _quantizable(model: nn.Module, family: str) -> list[tuple[str, nn.Module]]:
    skip = FAMILY_SPECS[family].skip_4bit
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(name == s or name.startswith(s + ".") for s in skip)
    ]


def _analytic_trainable(model: nn.Module, family: str, r: int, train_merger: bool, train_lm_head: bool = False) -> int:
    import re

    targets = lora_target_modules(family, train_merger, train_lm_head=train_lm_head)
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and re.fullmatch(targets.target_modules, name):
            total += r * (module.in_features + module.out_features)
    for merger in targets.modules_to_save:
        total += sum(p.numel() for p in model.get_submodule(merger).parameters())
    return total


def vision_tokens_per_clip(family: str, config, num_frames: int, frame_size: tuple[int, int] | None,
                           min_pixels: int | None, max_pixels: int | None) -> int:
    if family == "llava_ov15":
        from .llava_ov15.processing import LlavaOV15ImageProcessor

        proc = LlavaOV15ImageProcessor(
            min_pixels=min_pixels or 56 * 56, max_pixels=max_pixels or 28 * 28 * 1280,
            patch_size=config.vision_config.patch_size, merge_size=config.vision_config.spatial_merge_size,
        )
        if frame_size is None:
            side = int(math.sqrt(proc.max_pixels))
            frame_size = (side, side)
        return num_frames * proc.tokens_per_frame(*frame_size)
    side = config.vision_config.image_size // config.vision_config.patch_size
    return num_frames * math.ceil(side / 2) ** 2 + 1


def memory_estimate(total: int, quantized: int, trainable: int, seq_len: int, config, mode: str,
                    dtype: torch.dtype, batch_size: int = 1, gradient_checkpointing: bool = True) -> dict:
    """Rough GiB: weights + trainable state (fp32 weight, grad, 2 Adam moments) + activations + logits."""
    text = config.get_text_config()
    act_bytes = _BYTES.get(dtype, 2)
    weights = quantized * _NF4_BYTES_PER_PARAM + (total - quantized) * act_bytes
    optimizer = trainable * 16 if mode != "baseline" else 0
    tokens = seq_len * batch_size
    per_layer_full = tokens * (10 * text.hidden_size + 3 * text.intermediate_size) * act_bytes
    if mode == "baseline":
        activations = per_layer_full
    elif gradient_checkpointing:
        activations = text.num_hidden_layers * tokens * text.hidden_size * act_bytes + per_layer_full
    else:
        activations = text.num_hidden_layers * per_layer_full
    logits = tokens * text.vocab_size * 4 * (1 if mode == "baseline" else 2)
    gib = 1024**3
    parts = {"weights": weights, "trainable_state": optimizer, "activations": activations, "logits": logits}
    out = {k + "_gib": round(v / gib, 3) for k, v in parts.items()}
    out["total_gib"] = round(sum(parts.values()) / gib, 3)
    return out


def inspect_model(
    model_path: str | None = None,
    family: str = "llava_ov15",
    mode: str = "qlora",
    meta: bool = False,
    num_frames: int = 8,
    frame_size: tuple[int, int] | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    prompt_tokens: int = 0,
    lora_r: int = 16,
    train_merger: bool = False,
    train_lm_head: bool = False,
    compute_dtype: str = "bfloat16",
    torch_dtype: str = "bfloat16",
    batch_size: int = 1,
) -> dict:
    """Counts for ``mode`` (``baseline`` | ``lora`` | ``qlora``). With ``meta`` nothing is loaded."""
    from .loading import _check, _dtype, attach_lora, count_4bit_layers, load_model_and_processor

    _check(family, mode)
    if meta:
        model = build_on_meta(model_path, family)
        total = sum(p.numel() for p in model.parameters())
        quant_layers = _quantizable(model, family) if mode == "qlora" else []
        n_4bit = len(quant_layers)
        quantized = sum(m.weight.numel() for _, m in quant_layers)
        trainable = (_analytic_trainable(model, family, lora_r, train_merger, train_lm_head)
                     if mode != "baseline" else 0)
        config = model.config
    else:
        model, _ = load_model_and_processor(
            model_path, family=family, mode=mode, torch_dtype=torch_dtype, compute_dtype=compute_dtype
        )
        n_4bit = count_4bit_layers(model)
        total = sum(logical_numel(p) for p in model.parameters())
        quantized = sum(logical_numel(p) for p in model.parameters() if getattr(p, "quant_state", None) is not None)
        trainable = 0
        if mode != "baseline":
            model = attach_lora(model, mode, r=lora_r, alpha=2 * lora_r, train_merger=train_merger,
                                gradient_checkpointing=False, train_lm_head=train_lm_head)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        config = model.config
    vision = vision_tokens_per_clip(family, config, num_frames, frame_size, min_pixels, max_pixels)
    seq_len = prompt_tokens + vision
    dtype = _dtype(compute_dtype if mode == "qlora" else torch_dtype)
    return {
        "family": family,
        "mode": mode,
        "meta": meta,
        "total_params": int(total),  # the base architecture (adapters not included)
        "trainable_params": int(trainable),
        "trainable_percent": round(100 * trainable / total, 4) if total else 0.0,
        "linear4bit_layers": int(n_4bit),
        "quantized_params": int(quantized),
        "vision_tokens_per_clip": int(vision),
        "num_frames": num_frames,
        "longest_sequence_tokens": int(seq_len),
        "memory_estimate": memory_estimate(total, quantized, trainable, seq_len, config, mode, dtype, batch_size),
    }
