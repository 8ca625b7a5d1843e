"""A QLoRA model that ran an eval-mode forward still trains correctly (bitsandbytes' CPU repacking is kept off).

On a CPU with AVX512-BF16, bitsandbytes converts a `Linear4bit` weight in place to a packed layout the first time
the layer runs in eval mode without grad; gradients computed after that are wrong. `attach_lora` keeps the standard
layout for a model that trains, so an evaluation before or between training steps changes nothing.
"""

from __future__ import annotations

import bitsandbytes as bnb
import numpy as np
import torch
from bitsandbytes.functional import has_avx512bf16

from app.data.padding import PaddingCollator
from app.models.loading import attach_lora, load_model_and_processor


def _qlora(path):
    torch.manual_seed(0)
    model, processor = load_model_and_processor(str(path), mode="qlora", torch_dtype="float32",
                                                compute_dtype="float32", min_pixels=784, max_pixels=3136)
    model = attach_lora(model, "qlora", r=8, alpha=16, dropout=0.0, train_merger=True, gradient_checkpointing=False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B, so every LoRA matrix and the merger get a gradient from the first step
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model, processor


def _batch(processor) -> dict:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 3, 56, 56), dtype=np.uint8)
    text = processor.apply_chat_template([
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour is the object?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ])
    out = processor(text=[text], videos=[frames])
    sample = {k: v for k, v in out.items() if k.startswith("pixel_values") or k.endswith("_grid_thw")}
    sample["input_ids"] = out["input_ids"][0].long()
    sample["labels"] = sample["input_ids"].clone()
    return PaddingCollator(processor.tokenizer.pad_token_id)([sample])


def _gradients(model, batch: dict, eval_first: bool) -> dict[str, torch.Tensor]:
    if eval_first:
        model.eval()
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradients_after_an_eval_forward_equal_those_of_a_fresh_model(tiny_ov15_dir) -> None:
    model, processor = _qlora(tiny_ov15_dir)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    batch = _batch(processor)
    fresh = _gradients(model, batch, eval_first=False)
    after_eval = _gradients(model, batch, eval_first=True)
    assert set(fresh) == set(after_eval) and any("merger" in n for n in fresh)
    for name, grad in fresh.items():
        assert torch.allclose(after_eval[name], grad, rtol=1e-4, atol=1e-7), name

    if has_avx512bf16():  # where bitsandbytes would repack: show the guard is what keeps the gradients right
        unguarded, _ = _qlora(tiny_ov15_dir)
        for m in unguarded.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = True
        spoiled = _gradients(unguarded, batch, eval_first=True)
        merger = [n for n in fresh if "merger" in n]
        assert any(not torch.allclose(spoiled[n], fresh[n], rtol=1e-2, atol=1e-5) for n in merger)
