"""A batch mixing landscape, portrait and square clips trains (QLoRA) and evaluates on the tiny twin.

Each clip keeps its own grid (`video_grid_thw` per sample); the loss and the per-question answers of the mixed
batch must be what each clip gives alone, so nothing of one clip's geometry leaks into another's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clip_factory import encode

from app.config import DataConfig
from app.data.conversation import encode_for_training
from app.data.ego4d import Record, Turn
from app.data.frame_cache import load_clip
from app.data.padding import PaddingCollator
from app.evaluation.generate import EvalItem, run_batch
from app.models.loading import attach_lora, load_model_and_processor
from app.profiler import Profiler

SHAPES = {"landscape": (320, 180), "portrait": (90, 160), "square": (112, 112)}  # (width, height)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_ov15_dir):
    folder: Path = tmp_path_factory.mktemp("mixed")
    cfg = DataConfig(num_frames=4, min_pixels=784, max_pixels=6272, frame_cache=False)
    records, frames = [], {}
    for name, (width, height) in SHAPES.items():
        encode(folder / f"{name}.mp4", frames=12, width=width, height=height)
        turns = [Turn("human", "<video>\nWhich way is the picture?"), Turn("gpt", name, "shape")]
        records.append(Record(name, folder / f"{name}.mp4", turns, split="eval"))
        frames[name] = load_clip(records[-1].video, cfg)
    model, processor = load_model_and_processor(str(tiny_ov15_dir), mode="qlora", compute_dtype="float32",
                                                min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    return records, frames, model, processor


def test_clips_keep_their_own_grids(mixed):
    records, frames, _, processor = mixed
    sizes = {r.id: tuple(frames[r.id].shape[2:]) for r in records}
    assert sizes["landscape"][1] > sizes["landscape"][0] and sizes["portrait"][0] > sizes["portrait"][1]
    assert sizes["square"][0] == sizes["square"][1]
    batch = PaddingCollator(processor.tokenizer.pad_token_id)(
        [encode_for_training(r, frames[r.id], processor) for r in records])
    grids = batch["video_grid_thw"].tolist()
    assert [tuple(g[1:]) for g in grids] == [(h // 14, w // 14) for h, w in sizes.values()]
    assert len({tuple(g) for g in grids}) == 3


def test_mixed_batch_trains_like_its_clips_alone(mixed):
    records, frames, model, processor = mixed
    peft_model = attach_lora(model, "qlora", r=4, alpha=8, dropout=0.0, gradient_checkpointing=False)
    collate = PaddingCollator(processor.tokenizer.pad_token_id)
    samples = [encode_for_training(r, frames[r.id], processor) for r in records]
    peft_model.train()
    try:
        batch = collate(samples)
        batch.pop("index", None)
        loss = peft_model(**batch).loss
        loss.backward()
        grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n and p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        peft_model.zero_grad(set_to_none=True)
        # The batch loss is the mean over labelled tokens of all three; recompute it clip by clip.
        with torch.no_grad():
            total, count = 0.0, 0
            for s in samples:
                alone = collate([s])
                alone.pop("index", None)
                n = int((alone["labels"][:, 1:] != -100).sum())
                total += float(peft_model(**alone).loss) * n
                count += n
            again = peft_model(**batch).loss
        assert float(again) == pytest.approx(total / count, rel=1e-4)
    finally:
        peft_model.eval()
        peft_model.zero_grad(set_to_none=True)


def test_mixed_batch_evaluates_like_its_clips_alone(mixed):
    records, frames, model, processor = mixed
    items = [EvalItem(r, 0, "shape") for r in records]
    together = run_batch(model, processor, items, frames, 6, Profiler("eval", use_cuda=False))
    alone = [run_batch(model, processor, [it], frames, 6, Profiler("eval", use_cuda=False))[0] for it in items]
    assert [r["key"] for r in together] == [it.key for it in items]
    for mixed_row, single in zip(together, alone, strict=True):
        assert mixed_row["prediction"] == single["prediction"]
        assert mixed_row["answer_nll"] == pytest.approx(single["answer_nll"], rel=1e-4)
