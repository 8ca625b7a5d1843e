"""Done-when 1, 2, 4 on the tiny twin: training step, save/reload, cached generation, per-frame encoding."""

from __future__ import annotations

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ov15_helpers import qa_messages, random_video

from app.models.llava_ov15 import LlavaOV15ForConditionalGeneration, LlavaOV15Processor
from app.models.loading import attach_lora, load_model_and_processor


def _batch(processor: LlavaOV15Processor, frames: int = 8, size: int = 64, answer: str | None = "red"):
    text = processor.apply_chat_template(qa_messages("video", answer), add_generation_prompt=answer is None)
    return processor([text], videos=[random_video(frames, size, size)])


def test_forward_backward_8_frames_finite_loss(tiny_ov15):
    model, processor = tiny_ov15
    batch = _batch(processor)
    assert batch["video_grid_thw"].tolist() == [[8, 4, 4]]
    labels = batch["input_ids"].clone()
    labels[labels == processor.video_token_id] = -100
    model.train()
    try:
        out = model(**batch, labels=labels)
        out.loss.backward()
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    assert torch.isfinite(out.loss)
    # With labels the head ran on the supervised positions only: one row per labelled next token.
    assert out.logits.shape == (int((labels[:, 1:] != -100).sum()), model.config.text_config.vocab_size)
    assert out.token_nll.shape == batch["input_ids"].shape


def test_qlora_only_lora_and_merger_get_gradients(tiny_ov15_dir):
    model, processor = load_model_and_processor(str(tiny_ov15_dir), mode="qlora", compute_dtype="float32")
    llm_linears = [m for n, m in model.named_modules() if n.startswith("model.layers.") and "proj" in n.split(".")[-1]]
    assert llm_linears and all(isinstance(m, bnb.nn.Linear4bit) for m in llm_linears)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.visual.modules())
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)

    peft_model = attach_lora(model, "qlora", r=4, alpha=8, train_merger=True)
    peft_model.train()
    batch = _batch(processor)
    out = peft_model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    with_grad = [n for n, p in peft_model.named_parameters() if p.grad is not None]
    assert any("lora_A" in n for n in with_grad) and any("lora_B" in n for n in with_grad)
    assert all("lora_" in n or "visual.merger.modules_to_save" in n for n in with_grad), with_grad
    assert any("visual.merger.modules_to_save" in n for n in with_grad)
    assert not any(".visual.blocks." in n for n in with_grad)
    lora_modules = {n.split(".lora_")[0] for n in with_grad if "lora_" in n}
    assert all(".model.layers." in n for n in lora_modules)
    assert {n.rsplit(".", 1)[-1] for n in lora_modules} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }


def test_qlora_without_merger_trains_only_lora(tiny_ov15_dir):
    model, processor = load_model_and_processor(str(tiny_ov15_dir), mode="qlora", compute_dtype="float32")
    peft_model = attach_lora(model, "qlora", r=2, alpha=4, train_merger=False)
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)


def test_official_layout_loads_with_no_missing_or_unexpected_keys(tiny_ov15_dir):
    from safetensors import safe_open

    with safe_open(str(tiny_ov15_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"visual", "model", "lm_head"}
    assert "visual.merger.mlp.0.weight" in keys and "visual.class_pos_emb" in keys
    assert "model.layers.0.self_attn.q_norm.weight" in keys
    _, info = LlavaOV15ForConditionalGeneration.from_pretrained(tiny_ov15_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_save_reload_identical_logits(tiny_ov15, tmp_path):
    model, processor = tiny_ov15
    batch = _batch(processor, frames=2)
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path / "copy")
    reloaded = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path / "copy").eval()
    with torch.no_grad():
        after = reloaded(**batch).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_generate_with_cache_equals_greedy_without_cache(tiny_ov15_dir, attn):
    model = LlavaOV15ForConditionalGeneration.from_pretrained(tiny_ov15_dir, attn_implementation=attn).eval()
    processor = LlavaOV15Processor.from_pretrained(tiny_ov15_dir)
    batch = _batch(processor, frames=2, answer=None)
    with torch.no_grad():
        cached = model.generate(**batch, max_new_tokens=6, do_sample=False, use_cache=True, eos_token_id=None)
        ids = batch["input_ids"]
        for _ in range(6):  # greedy decoding, full recompute each step, no cache
            inputs = {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            logits = model(**inputs, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert cached.tolist() == ids.tolist()


def test_attention_implementations_agree(tiny_ov15_dir, tiny_ov15):
    model, processor = tiny_ov15
    batch = _batch(processor, frames=2)
    eager = LlavaOV15ForConditionalGeneration.from_pretrained(tiny_ov15_dir, attn_implementation="eager").eval()
    assert eager.config.vision_config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(eager(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_matches_plain_gradients(tiny_ov15_dir):
    batch = None
    grads = []
    for checkpointing in (False, True):
        model, processor = load_model_and_processor(str(tiny_ov15_dir))
        batch = batch or _batch(processor, frames=2)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        grads.append(model.visual.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_placeholder_count_mismatch_raises_clear_error(tiny_ov15):
    model, processor = tiny_ov15
    batch = _batch(processor, frames=2)
    ids = batch["input_ids"].clone()
    first = (ids[0] == processor.video_token_id).nonzero()[0, 0]
    ids[0, first] = processor.tokenizer.pad_token_id
    with pytest.raises(ValueError, match="video features and video tokens do not match"):
        model(input_ids=ids, pixel_values_videos=batch["pixel_values_videos"], video_grid_thw=batch["video_grid_thw"])
    with pytest.raises(ValueError, match="placeholders"):
        processor([processor.apply_chat_template(qa_messages())], videos=[random_video(2, 56, 56)] * 2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frames=st.integers(1, 4),
    height=st.integers(20, 130),
    width=st.integers(20, 130),
    seed=st.integers(0, 2**16),
)
def test_video_pad_tokens_equal_merged_outputs_and_frames_encode_alone(tiny_ov15, frames, height, width, seed):
    model, processor = tiny_ov15
    text = processor.apply_chat_template(qa_messages("video"))
    video = random_video(frames, height, width, seed)
    batch = processor([text], videos=[video])
    t, gh, gw = batch["video_grid_thw"][0].tolist()
    n_pad = int((batch["input_ids"] == processor.video_token_id).sum())
    with torch.no_grad():
        features = model.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"])
        assert t == frames and n_pad == features.shape[0] == t * gh * gw // 4
        per_frame = gh * gw // 4
        for i in range(frames):
            alone = processor(["<|vision_start|><|image_pad|><|vision_end|>"], images=[video[i]])
            image_features = model.get_image_features(alone["pixel_values"], alone["image_grid_thw"])
            torch.testing.assert_close(features[i * per_frame:(i + 1) * per_frame], image_features,
                                       rtol=1e-5, atol=1e-6)


def test_multi_image_batch_mixed_sizes_each_encodes_alone(tiny_ov15):
    model, processor = tiny_ov15
    images = [random_video(1, 56, 84, 1)[0], random_video(1, 112, 56, 2)[0], random_video(1, 56, 84, 3)[0]]
    text = ["<|vision_start|><|image_pad|><|vision_end|>a", "<|vision_start|><|image_pad|><|vision_end|>" * 2]
    batch = processor(text, images=images)
    with torch.no_grad():
        together = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        offset = 0
        for image in images:
            alone = processor(["<|image_pad|>"], images=[image])
            feats = model.get_image_features(alone["pixel_values"], alone["image_grid_thw"])
            torch.testing.assert_close(together[offset:offset + len(feats)], feats, rtol=1e-5, atol=1e-6)
            offset += len(feats)
        assert offset == together.shape[0]
        out = model(**batch)
    assert torch.isfinite(out.logits).all()


def test_bf16_lora_mode_trains_adapters(tiny_ov15_dir):
    model, processor = load_model_and_processor(str(tiny_ov15_dir), mode="lora", torch_dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    peft_model = attach_lora(model, "lora", r=2, alpha=4)
    batch = _batch(processor, frames=2)
    peft_model.train()
    loss = peft_model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss.float())
    assert np.all(["lora_" in n for n, p in peft_model.named_parameters() if p.grad is not None])
