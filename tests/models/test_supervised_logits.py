"""The LM head runs only where the loss looks: same loss, same gradients, same answer NLL as full logits.

Issue #15: at 16 frames and a 151,936-token vocabulary the full-sequence logits of one sample are ~1.3 GB in bf16;
the loss only reads the positions whose next token is labelled. On the tiny twin (fp32) both paths must agree
to 1e-6 for a padded, multi-turn batch under gradient accumulation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from clip_factory import encode

from app.config import DataConfig
from app.data.conversation import IGNORE_INDEX, encode_for_training
from app.data.ego4d import Record, Turn
from app.data.frame_cache import load_clip
from app.data.padding import PaddingCollator
from app.evaluation.generate import EvalItem, run_batch
from app.models.loading import attach_lora, load_model_and_processor
from app.profiler import Profiler


def _record(rid: str, video: Path, turns: int) -> Record:
    convs = [Turn("human", "<video>\nWhat colour is the object?"), Turn("gpt", "red", "color")]
    for k in range(turns - 1):
        convs += [Turn("human", f"And question {k}, which way does it move?"), Turn("gpt", "left and then up", "dir")]
    return Record(rid, video, convs, split="eval")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_ov15_dir):
    folder = tmp_path_factory.mktemp("supervised")
    cfg = DataConfig(num_frames=4, min_pixels=784, max_pixels=3136, frame_cache=False)
    encode(folder / "a.mp4", frames=8, width=112, height=64)
    encode(folder / "b.mp4", frames=8, width=64, height=112)
    # Different lengths (1, 2 and 3 turns) so that every micro-batch is padded.
    records = [_record("one", folder / "a.mp4", 1), _record("two", folder / "b.mp4", 2),
               _record("three", folder / "a.mp4", 3), _record("four", folder / "b.mp4", 1)]
    frames = {r.id: load_clip(r.video, cfg) for r in records}
    model, processor = load_model_and_processor(str(tiny_ov15_dir), mode="qlora", compute_dtype="float32",
                                                min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    model = attach_lora(model, "qlora", r=4, alpha=8, dropout=0.0, train_merger=True, gradient_checkpointing=False)
    collate = PaddingCollator(processor.tokenizer.pad_token_id)
    micro = [collate([encode_for_training(r, frames[r.id], processor) for r in records[i : i + 2]]) for i in (0, 2)]
    for batch in micro:
        batch.pop("index", None)
    return model, processor, records, frames, micro


def _accumulated(model, micro: list[dict], supervised_only: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimizer step's worth of loss and gradients over two micro-batches, as the HF Trainer computes it."""
    model.get_base_model().supervised_logits_only = supervised_only
    model.zero_grad(set_to_none=True)
    # The Trainer's count: labelled tokens after the shift, over every micro-batch of the step.
    num_items = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
    total = 0.0
    model.train()
    for batch in micro:
        loss = model(**batch, num_items_in_batch=torch.tensor(num_items)).loss
        loss.backward()
        total += float(loss.detach())
    model.eval()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    model.get_base_model().supervised_logits_only = True
    return total, grads


def test_loss_and_every_trainable_gradient_equal_the_full_logits_path(setup):
    model, _, _, _, micro = setup
    assert all((b["attention_mask"] == 0).any() for b in micro)  # padded
    ours, ours_grads = _accumulated(model, micro, supervised_only=True)
    full, full_grads = _accumulated(model, micro, supervised_only=False)
    assert ours == pytest.approx(full, abs=1e-6)
    assert ours_grads.keys() == full_grads.keys() and any("lora_" in n for n in ours_grads)
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    assert sum(float(g.abs().sum()) for g in ours_grads.values()) > 0


def test_mean_loss_without_accumulation_matches_transformers(setup):
    model, _, _, _, micro = setup
    with torch.no_grad():
        out = model(**micro[0])
        model.get_base_model().supervised_logits_only = False
        reference = model(**micro[0])
        model.get_base_model().supervised_logits_only = True
    labelled = int((micro[0]["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert out.logits.shape == (labelled, reference.logits.shape[-1])  # the head ran on answer tokens only
    assert float(out.loss) == pytest.approx(float(reference.loss), abs=1e-6)
    assert float(out.token_nll.sum()) / labelled == pytest.approx(float(reference.loss), abs=1e-6)


def test_answer_nll_in_evaluation_is_unchanged_and_prefill_keeps_one_position(setup):
    model, processor, records, frames, _ = setup
    items = [EvalItem(r, k, None) for r in records for k in range(len(r.question_types))]
    rows_counted: list[int] = []
    head = model.get_base_model().lm_head
    hook = head.register_forward_hook(lambda _m, args, _o: rows_counted.append(args[0].shape[-2]))
    try:
        ours = run_batch(model, processor, items, frames, 3, Profiler("eval", use_cuda=False))
    finally:
        hook.remove()
    model.get_base_model().supervised_logits_only = False
    try:
        full = run_batch(model, processor, items, frames, 3, Profiler("eval", use_cuda=False))
    finally:
        model.get_base_model().supervised_logits_only = True
    for a, b in zip(ours, full, strict=True):
        assert a["answer_nll"] == pytest.approx(b["answer_nll"], abs=1e-6)
        assert a["prediction"] == b["prediction"] and a["answer_tokens"] == b["answer_tokens"] > 0
    # Generation: the prefill asks the head for the last position only, then one per new token; the scoring
    # pass asks for the answer tokens' rows only (never batch x sequence rows).
    assert rows_counted[0] == 1
    assert max(rows_counted) == sum(r["answer_tokens"] for r in ours)
