"""8B meta count vs the published total, config reading, tiny builders, the llava_onevision family."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import torch
from ov15_helpers import random_video

from app.models.inspect import PUBLISHED_TOTAL_8B, SHIPPED_8B_CONFIG, build_on_meta, inspect_model
from app.models.llava_ov15 import LlavaOV15Config
from app.models.loading import attach_lora, load_model_and_processor, lora_target_modules
from app.models.tiny import build_tiny_llava_ov15


def test_shipped_8b_config_reads_official_layout():
    raw = json.loads(SHIPPED_8B_CONFIG.read_text())
    assert raw["model_type"] == "llavaonevision1_5" and raw["vision_config"]["model_type"] == "rice_vit"
    config = LlavaOV15Config.from_pretrained(SHIPPED_8B_CONFIG)
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (4096, 36)
    assert config.text_config.rope_parameters["rope_theta"] == 1_000_000
    assert (config.vision_config.depth, config.vision_config.hidden_size) == (24, 1024)
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)


def test_inspect_meta_8b_total_matches_published_figure():
    report = inspect_model(None, family="llava_ov15", mode="qlora", meta=True, num_frames=8,
                           frame_size=(384, 384), prompt_tokens=100)
    assert abs(report["total_params"] / PUBLISHED_TOTAL_8B - 1) <= 0.005, report["total_params"]
    assert report["linear4bit_layers"] == 36 * 7
    assert report["vision_tokens_per_clip"] == 8 * 14**2  # 384 px rounds to 392 = 14 x 28
    assert report["longest_sequence_tokens"] == 1668
    assert 0 < report["trainable_params"] < 0.01 * report["total_params"]
    assert report["memory_estimate"]["total_gib"] > report["memory_estimate"]["weights_gib"] > 4


def test_meta_model_has_no_storage_and_vision_tower_is_300m():
    model = build_on_meta()
    assert all(p.device.type == "meta" for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith("visual.") and ".merger." not in n)
    assert 0.29e9 < vision < 0.31e9


def test_inspect_tiny_meta_equals_loaded(tiny_ov15_dir):
    kwargs = dict(mode="qlora", num_frames=8, frame_size=(112, 112), lora_r=4, train_merger=True,
                  compute_dtype="float32")
    meta = inspect_model(str(tiny_ov15_dir), meta=True, **kwargs)
    loaded = inspect_model(str(tiny_ov15_dir), meta=False, **kwargs)
    for key in ("total_params", "trainable_params", "linear4bit_layers", "quantized_params",
                "vision_tokens_per_clip"):
        assert meta[key] == loaded[key], key
    assert loaded["vision_tokens_per_clip"] == 8 * 16


def test_tiny_builder_is_idempotent(tmp_path):
    first = build_tiny_llava_ov15(tmp_path / "tiny")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_llava_ov15(tmp_path / "tiny") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_llava_onevision_family_same_interface(tiny_onevision_dir):
    model, processor = load_model_and_processor(str(tiny_onevision_dir), family="llava_onevision", mode="qlora",
                                                compute_dtype="float32")
    assert lora_target_modules(model).target_modules.startswith(r"^model\.language_model\.layers")
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(n.startswith("model.language_model.") for n in quantized)
    peft_model = attach_lora(model, "qlora", r=2, alpha=4, train_merger=True)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour?"}]},
         {"role": "assistant", "content": "red"}])
    batch = processor([text], videos=[random_video(8, 64, 64)])
    n_video = int((batch["input_ids"] == processor.video_token_id).sum())
    assert n_video == processor.tokens_per_video(8)
    peft_model.train()
    out = peft_model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [n for n, p in peft_model.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n or "multi_modal_projector.modules_to_save" in n for n in grads)
