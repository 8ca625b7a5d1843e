"""Processor: pixels equal transformers' Qwen2-VL image processor (PIL path), chat template, placeholder expansion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ov15_helpers import qa_messages, random_video
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from app.models.llava_ov15 import LlavaOV15ImageProcessor, LlavaOV15Processor


@settings(max_examples=15, deadline=None)
@given(height=st.integers(16, 300), width=st.integers(16, 300), max_side=st.sampled_from([56, 112, 224]),
       seed=st.integers(0, 1000))
def test_pixels_match_transformers_qwen2vl_pil_processor(height, width, max_side, seed):
    image = random_video(1, height, width, seed)[0]
    ours = LlavaOV15ImageProcessor(min_pixels=56 * 56, max_pixels=max_side * max_side)
    reference = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=max_side * max_side, temporal_patch_size=1)
    expected = reference(images=[Image.fromarray(image.transpose(1, 2, 0))], return_tensors="pt")
    got = ours(images=[image])
    assert got["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], rtol=0, atol=1e-6)


def test_video_frames_are_processed_like_images():
    video = random_video(3, 70, 90)
    proc = LlavaOV15ImageProcessor(max_pixels=112 * 112)
    rows, grid = proc.preprocess_video(video)
    per_frame = [proc.preprocess_image(frame)[0] for frame in video]
    assert grid == (3, grid[1], grid[2])
    np.testing.assert_array_equal(rows, np.concatenate(per_frame))


def test_chat_template_and_expansion(tiny_ov15):
    _, processor = tiny_ov15
    text = processor.apply_chat_template(qa_messages("video", None), add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>What colour is the moving object?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    batch = processor([text, text], videos=[random_video(2, 56, 56), random_video(3, 112, 84)], padding_side="left")
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4], [3, 8, 6]]
    counts = (batch["input_ids"] == processor.video_token_id).sum(1).tolist()
    assert counts == [2 * 16 // 4, 3 * 48 // 4]
    assert batch["pixel_values_videos"].shape == (2 * 16 + 3 * 48, 3 * 14 * 14)
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1].all()
    ids = batch["input_ids"][1].tolist()
    start = ids.index(processor.vision_start_token_id)
    assert ids[start + 1 + counts[1]] == processor.vision_end_token_id


def test_processor_round_trip_and_pixel_limits(tiny_ov15_dir, tmp_path):
    processor = LlavaOV15Processor.from_pretrained(tiny_ov15_dir, max_pixels=56 * 56)
    assert processor.image_processor.tokens_per_frame(480, 640) == 2  # 28x56 px -> 2x4 patches
    processor.save_pretrained(tmp_path)
    again = LlavaOV15Processor.from_pretrained(tmp_path)
    assert again.max_pixels == 56 * 56 and again.video_token_id == processor.video_token_id
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert again.tokenizer.convert_tokens_to_ids("<|im_end|>") == im_end


@pytest.mark.parametrize("height,width", [(56, 84), (56, 56), (112, 112)])
def test_clip_at_target_size_skips_pil_with_identical_pixels(height, width):
    # The loader hands frames already at their target size; that path skips PIL and must not change a bit.
    video = random_video(4, height, width, seed=3)
    proc = LlavaOV15ImageProcessor(max_pixels=112 * 112)
    assert proc._at_target_size(video)
    rows, grid = proc.preprocess_video(video)
    per_frame = [proc.preprocess_image(frame)[0] for frame in video]
    assert grid == (4, height // 14, width // 14)
    np.testing.assert_array_equal(rows, np.concatenate(per_frame))


def test_processor_rejects_bad_frames():
    proc = LlavaOV15ImageProcessor()
    with pytest.raises(TypeError):
        proc.preprocess_video(np.zeros((2, 3, 56, 56), dtype=np.float32))
    with pytest.raises(ValueError):
        proc.preprocess_video(np.zeros((3, 56, 56), dtype=np.uint8))


def test_tiny_tokenizer_has_real_special_tokens_and_short_answers(tiny_ov15):
    _, processor = tiny_ov15
    tok = processor.tokenizer
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                    "<|image_pad|>", "<|video_pad|>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert tok.tokenize(special) == [special]
    for word in ("red", "green", "blue", "yellow", "purple", "orange", "left", "right", "up", "down",
                 "circle", "square", "triangle", "star"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert len(tok("What colour is the moving object?", add_special_tokens=False)["input_ids"]) <= 8
