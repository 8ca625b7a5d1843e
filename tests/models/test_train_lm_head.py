"""`lora.train_lm_head`: lm_head is trained in full, counted by `model inspect`, saved with the adapter, reloaded."""

from __future__ import annotations

import torch
from peft import PeftModel

from app.models.inspect import _analytic_trainable
from app.models.loading import attach_lora, load_model_and_processor


def _load(path):
    model, _ = load_model_and_processor(str(path), mode="qlora", torch_dtype="float32", compute_dtype="float32")
    return model


def test_lm_head_trains_in_full_and_travels_with_the_adapter(tiny_ov15_dir, tmp_path) -> None:
    plain = attach_lora(_load(tiny_ov15_dir), "qlora", r=8, alpha=16, train_merger=True,
                        gradient_checkpointing=False)
    model = attach_lora(_load(tiny_ov15_dir), "qlora", r=8, alpha=16, train_merger=True,
                        gradient_checkpointing=False, train_lm_head=True)
    head = model.base_model.model.lm_head
    extra = sum(p.numel() for p in model.parameters() if p.requires_grad) - \
        sum(p.numel() for p in plain.parameters() if p.requires_grad)
    assert extra == head.weight.numel() > 0
    counted = _analytic_trainable(_load(tiny_ov15_dir), "llava_ov15", 8, True, train_lm_head=True)
    assert counted == sum(p.numel() for p in model.parameters() if p.requires_grad)

    with torch.no_grad():  # what training would do to it
        head.weight.add_(torch.linspace(-1, 1, head.weight.numel()).view_as(head.weight))
    trained = head.weight.detach().clone()
    model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(_load(tiny_ov15_dir), str(tmp_path / "adapter"))
    assert torch.equal(reloaded.base_model.model.lm_head.weight, trained)
    assert not torch.equal(_load(tiny_ov15_dir).lm_head.weight, trained)  # the base itself is untouched


def test_tiny_vision_width_builds_its_own_twin(tmp_path) -> None:
    import json

    from app.config import ModelConfig
    from app.models.setup import model_path

    wide = model_path(ModelConfig(name_or_path="tiny-llava-ov15", tiny=True, cache_dir=str(tmp_path),
                                  tiny_vision_width=64))
    assert wide.endswith("tiny-llava-ov15-vit64")
    vision = json.loads((tmp_path / "tiny-llava-ov15-vit64" / "config.json").read_text())["vision_config"]
    assert vision["hidden_size"] == vision["embed_dim"] == 64
    assert not (tmp_path / "tiny-llava-ov15").exists()  # the default twin's folder is not touched
