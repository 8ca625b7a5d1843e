"""An adapter merged into its full-precision base, saved as a plain checkpoint of the hub layout.

A QLoRA adapter trained on 4-bit weights is merged into the base loaded in `model.torch_dtype` (bf16 for the 8B),
never into the 4-bit weights, so the shipped model has no quantisation error baked in. The folder holds
safetensors shards + index (`visual.*`, `model.*`, `lm_head.*`, model_type `llavaonevision1_5`), the processor and
its chat template, and ADAPTER_META saying what it was merged from; it loads with `from_pretrained` as a plain
model, and `evaluate --model DIR` / `ask --model DIR` take it like an adapter folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from app.config import Config
from app.io import replace_dir
from app.models.setup import adapter_base, attention_implementation
from app.run_files import ADAPTER_META


def merge_adapter(cfg: Config, adapter_dir: Path, out: Path, max_shard_size: str = "4GB") -> dict[str, Any]:
    """Write the merged model to `out` (atomically: beside it, then renamed). Returns what was merged."""
    import torch
    from peft import PeftModel

    from app.models.loading import load_model_and_processor

    base, meta = adapter_base(adapter_dir)
    attn, _ = attention_implementation(cfg.model, on_cuda=False)
    # Full precision in the configured dtype on the host: merging needs no GPU, and 4-bit weights are never used.
    model, processor = load_model_and_processor(
        base, family=cfg.model.family, mode="baseline", torch_dtype=cfg.model.torch_dtype, attn_implementation=attn,
        trust_remote_code=cfg.model.trust_remote_code, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
    )
    with torch.no_grad():
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
    processor.save_pretrained(tmp)
    info = {"mode": "merged", "merged_from": str(Path(adapter_dir).resolve()), "adapter_mode": meta.get("mode"),
            "base_model": base, "family": cfg.model.family, "torch_dtype": cfg.model.torch_dtype,
            "config_hash": meta.get("config_hash")}
    (tmp / ADAPTER_META).write_text(json.dumps(info, indent=2) + "\n")
    replace_dir(tmp, out)
    info["bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return info
