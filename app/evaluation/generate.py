"""Held-out evaluation: batched greedy generation (left padding, KV cache) and teacher-forced answer NLL.

One item per gpt turn of each held-out record; earlier answers of a multi-turn record are given as history
(teacher forcing), so every question is asked in the context the data defines. Items are processed in a
fixed order, a batch at a time: decode frames → generate → score the reference → hand the batch's
predictions to `on_batch` (the pipeline appends them to its resumable log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch

from app.config import DataConfig
from app.data.conversation import IGNORE_INDEX, encode_for_training, encode_prompt
from app.data.ego4d import Record
from app.data.frame_cache import load_clip
from app.data.mcq import option_replies
from app.data.padding import PaddingCollator
from app.data.video import VideoError
from app.profiler import Profiler

EVAL_REGIONS = ("batch", "data_wait", "generate", "score")


@dataclass(frozen=True)
class EvalItem:
    record: Record
    gpt_index: int  # which gpt turn of the record is asked
    question_type: str | None

    @property
    def key(self) -> str:
        return f"{self.record.id}#{self.gpt_index}"

    @property
    def question(self) -> str:
        gpt = [i for i, t in enumerate(self.record.turns) if t.role == "gpt"][self.gpt_index]
        return self.record.turns[gpt - 1].value if gpt > 0 else ""

    @property
    def options(self) -> tuple[str, ...] | None:
        return [t for t in self.record.turns if t.role == "gpt"][self.gpt_index].options


def eval_items(records: Iterable[Record]) -> list[EvalItem]:
    items = []
    for record in records:
        for k, qtype in enumerate(record.question_types):
            items.append(EvalItem(record, k, qtype))
    return items


def _upto_answer(record: Record, gpt_index: int, answer: str | None = None) -> Record:
    """The record cut just after its `gpt_index`-th answer (for scoring that answer alone), which `answer`
    replaces when given (an option of a multiple-choice question)."""
    gpts = [i for i, t in enumerate(record.turns) if t.role == "gpt"]
    turns = record.turns[: gpts[gpt_index] + 1]
    if answer is not None:
        turns = [*turns[:-1], replace(turns[-1], value=answer)]
    return replace(record, turns=turns)


def _last_span_only(labels: torch.Tensor) -> torch.Tensor:
    """Keep only the final labelled run (this item's answer + <|im_end|>), drop its <|im_end|> too."""
    idx = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    keep = torch.full_like(labels, IGNORE_INDEX)
    if not idx:
        return keep
    start = idx[-1]
    while start - 1 in idx:
        start -= 1
    end = idx[-1]  # the closing <|im_end|>: not part of the answer text
    keep[start:end] = labels[start:end]
    return keep


def _to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if not isinstance(v, torch.Tensor):
            continue
        v = v.to(device)
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v
    return out


@torch.no_grad()
def run_batch(
    model, processor, items: list[EvalItem], frames: dict[str, Any], max_new_tokens: int, profiler: Profiler
) -> list[dict[str, Any]]:
    device = next(model.parameters()).device
    vision_dtype = getattr(model, "dtype", None)
    pad_id = processor.tokenizer.pad_token_id

    # Generation: left padding so every prompt ends where its answer begins.
    prompts, refs = [], []
    for it in items:
        enc, ref = encode_prompt(it.record, frames[it.record.id], processor, it.gpt_index)
        prompts.append(enc)
        refs.append(ref)
    batch = _to_device(PaddingCollator(pad_id, padding_side="left")(prompts), device, vision_dtype)
    profiler.timer.start("generate")
    out = model.generate(**batch, **_greedy(processor, max_new_tokens))
    profiler.timer.stop("generate")
    new_tokens = out[:, batch["input_ids"].shape[1]:]
    generated = int(sum(int((row != pad_id).sum()) for row in new_tokens))
    predictions = [p.strip() for p in processor.batch_decode(new_tokens, skip_special_tokens=True)]

    # Scoring: the reference answer under teacher forcing, same items, same batch.
    profiler.timer.start("score")
    sums, counts = _answer_nll(model, processor, [
        encode_for_training(_upto_answer(it.record, it.gpt_index), frames[it.record.id], processor) for it in items
    ], device, vision_dtype)
    # A multiple-choice question: every option as the answer, one forward per question, each option's mean NLL.
    option_nll: list[list[float] | None] = []
    for it in items:
        if not it.options:
            option_nll.append(None)
            continue
        reference = [t for t in it.record.turns if t.role == "gpt"][it.gpt_index].value
        encs = [encode_for_training(_upto_answer(it.record, it.gpt_index, reply), frames[it.record.id], processor)
                for reply in option_replies(it.options, reference)]
        o_sums, o_counts = _answer_nll(model, processor, encs, device, vision_dtype)
        option_nll.append([float(a / b) if b else None for a, b in zip(o_sums, o_counts, strict=True)])
    profiler.timer.stop("score")

    profiler.count(generated, len(items))
    return [
        {
            "key": it.key,
            "id": it.record.id,
            "gpt_index": it.gpt_index,
            "question_type": it.question_type,
            "question": it.question,
            "reference": ref,
            "prediction": pred,
            "answer_nll": float(s / c) if c else None,
            "answer_tokens": int(c),
            **({"options": list(it.options), "option_nll": o} if it.options else {}),
        }
        for it, ref, pred, s, c, o in zip(items, refs, predictions, sums, counts, option_nll, strict=True)
    ]


def _greedy(processor, max_new_tokens: int) -> dict[str, Any]:
    """How every answer is generated, in evaluation and in `ask`: greedy, cached, ending at <|im_end|>."""
    pad_id = processor.tokenizer.pad_token_id
    eos = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_id]
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "use_cache": True, "pad_token_id": pad_id,
            "eos_token_id": eos}


@torch.no_grad()
def answer(model, processor, record: Record, frames, max_new_tokens: int, streamer=None) -> str:
    """The answer to `record`'s first question, generated exactly as the evaluation generates it (one item, so no
    padding); `streamer` (transformers' streamer protocol) receives the text as it comes."""
    enc, _ = encode_prompt(record, frames, processor, 0)
    batch = _to_device(PaddingCollator(processor.tokenizer.pad_token_id, padding_side="left")([enc]),
                       next(model.parameters()).device, getattr(model, "dtype", None))
    out = model.generate(**batch, **_greedy(processor, max_new_tokens), streamer=streamer)
    return processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


def _answer_nll(model, processor, encoded: list[dict[str, Any]], device, dtype) -> tuple[list[float], list[int]]:
    """Summed NLL and token count of each sample's last answer (teacher-forced, one padded forward)."""
    for enc in encoded:
        enc["labels"] = _last_span_only(enc["labels"])
    batch = _to_device(PaddingCollator(processor.tokenizer.pad_token_id, padding_side="right")(encoded), device,
                       dtype)
    labels = batch.pop("labels")
    out = model(**batch, labels=labels)
    shift_labels = labels[:, 1:]
    counts = (shift_labels != IGNORE_INDEX).sum(1)
    if getattr(out, "token_nll", None) is not None:
        # LLaVA-OV-1.5 ran its head on the answer tokens only and gives each one's NLL.
        sums = out.token_nll.sum(1)
    else:  # a family without that (llava_onevision): full-sequence logits
        nll = torch.nn.functional.cross_entropy(
            out.logits.float()[:, :-1].transpose(1, 2), shift_labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        sums = nll.sum(1)
    return sums.tolist(), counts.tolist()


def evaluate_items(
    model,
    processor,
    items: list[EvalItem],
    data_cfg: DataConfig,
    batch_size: int,
    max_new_tokens: int,
    profiler: Profiler,
    on_batch: Callable[[list[dict[str, Any]]], None],
    on_skip: Callable[[EvalItem, str], None],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run `items` in order, `batch_size` at a time; a clip that fails to decode skips every one of its items,
    each reported through `on_skip` with the decoder's reason."""
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        profiler.timer.start("batch")
        profiler.timer.start("data_wait")
        frames: dict[str, Any] = {}
        failed: dict[str, str] = {}
        ok = []
        for it in chunk:
            rid = it.record.id
            if rid not in frames and rid not in failed:
                try:
                    frames[rid] = load_clip(it.record.video, data_cfg, it.record.info)
                except VideoError as exc:
                    failed[rid] = str(exc)
            # Every question of a broken clip is reported, not only the first one met in this batch.
            if rid in failed:
                on_skip(it, failed[rid])
            else:
                ok.append(it)
        profiler.timer.stop("data_wait")
        rows = run_batch(model, processor, ok, frames, max_new_tokens, profiler) if ok else []
        profiler.timer.stop("batch")
        profiler.step_end()
        on_batch(rows)
        if progress:
            progress(len(chunk))
