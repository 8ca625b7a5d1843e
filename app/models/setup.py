"""From config to a loaded model: the one entry point train, baseline, evaluate and the benchmarks load through.

`load_model` reads the config (where the weights are, which attention kernel, which dtype on which device, 4-bit
or not) and calls `loading.load_model_and_processor`; `load_for_training` adds the LoRA adapters; `load_adapter`
puts a saved adapter back on its base, quantised as it was trained.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import Config, ModelConfig
from app.errors import UserError
from app.run_files import ADAPTER_META

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


def on_cuda(cfg: Config) -> bool:
    import torch

    return torch.cuda.is_available() and not cfg.use_cpu


def load_model(cfg: Config, mode: str = "baseline", path: str | None = None, zero3: bool = False,
               say: Callable[[str], Any] = print):
    """`(model, processor, attention kernel)` for `mode` (baseline | lora | qlora) as the config describes it.

    `path` overrides where the base weights are (an adapter's recorded base). `zero3`: DeepSpeed ZeRO-3 places
    and shards the weights itself, so no device map, and 4-bit weights are stored in the compute dtype so that
    ZeRO-3 can partition them. A note on the attention kernel (a fallback, once per process) goes to `say`.
    """
    from app.distributed import local_rank
    from app.models.loading import load_model_and_processor

    cuda = on_cuda(cfg)
    attn, note = attention_implementation(cfg.model, cuda)
    if note:
        say(note)
    quant = cfg.quantization
    model, processor = load_model_and_processor(
        path or model_path(cfg.model),
        family=cfg.model.family,
        mode=mode,
        torch_dtype=cfg.model.torch_dtype if cuda else "float32",  # bf16 matmuls are slow on CPU
        attn_implementation=attn,
        compute_dtype=quant.compute_dtype,
        quant_type=quant.quant_type,
        double_quant=quant.double_quant,
        quant_storage=quant.compute_dtype if (zero3 and mode == "qlora") else None,
        device_map={"": local_rank()} if cuda and not zero3 else None,
        trust_remote_code=cfg.model.trust_remote_code,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    return model, processor, attn


def load_for_training(cfg: Config, mode: str, zero3: bool = False, say: Callable[[str], Any] = print):
    """The base for `mode` with LoRA adapters attached (PEFT), as `train` uses it."""
    from transformers import set_seed

    from app.models.inspect import logical_numel
    from app.models.loading import attach_lora

    model, processor, attn = load_model(cfg, mode, zero3=zero3, say=say)
    # PEFT draws each lora_A from torch's generator when it attaches the adapters, before the Trainer seeds anything:
    # without this, the same training.seed gave a different run each time (losses apart from the first update).
    set_seed(cfg.training.seed)
    lora = cfg.lora
    model = attach_lora(
        model, mode, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, train_merger=lora.train_merger,
        gradient_checkpointing=cfg.model.gradient_checkpointing, projections=lora.target_modules,
        train_lm_head=lora.train_lm_head,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(logical_numel(p) for p in model.parameters())  # the model's parameters, not 4-bit bytes
    say(f"model: {cfg.model.name_or_path} ({mode}, attention {attn}); trainable {trainable:,} of {total:,}")
    return model, processor, attn


def adapter_meta(cfg: Config, mode: str) -> dict[str, Any]:
    """What `train` writes beside the adapter (ADAPTER_META): enough for `load_adapter` to rebuild its base."""
    base = str(Path(model_path(cfg.model)).resolve()) if cfg.model.tiny else cfg.model.name_or_path
    return {"mode": mode, "base_model": base, "family": cfg.model.family, "config_hash": cfg.config_hash()}


def adapter_base(adapter_dir: Path) -> tuple[str, dict[str, Any]]:
    """Where an adapter's base weights are (its meta, else adapter_config.json) and its meta (ADAPTER_META)."""
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"{adapter_dir}: not an adapter folder (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise UserError(f"{adapter_dir}: no adapter_model.safetensors (pickled adapter weights are never loaded)")
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    meta_file = adapter_dir / ADAPTER_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    base = meta.get("base_model") or base
    if not base:
        raise UserError(f"{config_file}: base_model_name_or_path is empty")
    if not Path(base).exists() and "/" not in base:
        raise UserError(f"{config_file}: base model {base!r} not found")
    return base, meta


def load_adapter(cfg: Config, adapter_dir: Path, say: Callable[[str], Any] = print):
    """`(model, processor, meta)`: the adapter's base, quantised as it was trained, with the adapter on it.

    A folder `export` wrote (a merged model: config.json and weights, no adapter) loads as a plain model."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "config.json").is_file():
        meta_file = adapter_dir / ADAPTER_META
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        model, processor, _ = load_model(cfg, "baseline", path=str(adapter_dir), say=say)
        return model, processor, {**meta, "mode": "merged"}
    base, meta = adapter_base(adapter_dir)
    mode = "qlora" if meta.get("mode") == "qlora" else "baseline"
    model, processor, _ = load_model(cfg, mode, path=base, say=say)
    return PeftModel.from_pretrained(model, str(adapter_dir)), processor, meta
