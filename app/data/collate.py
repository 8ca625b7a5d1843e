"""Records -> model tensors: chat messages, label masking, exact sequence lengths, the dataset and the collator.

The model must see exactly the processor's chat-template text, so every sample is encoded by the processor on the
full rendered conversation (one tokenizer call, the ids the processor itself would give). Labels come from character
offsets: the template is rendered for growing prefixes of the conversation, which locates each assistant reply in
the full text; the tokens whose offsets start inside a reply (and its closing ``<|im_end|>``) are the only labelled
ones. Nothing is ever truncated: a record longer than ``max_seq_len`` is reported by `filter_too_long` and left out,
so vision tokens are never cut through.

Works with both processor families (``LlavaOV15Processor`` and ``OnevisionProcessor``): both expose
``apply_chat_template``, ``__call__(text, videos=[...])``, ``tokenizer`` and ``video_token_id``.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from app.config import DataConfig
from app.data.ego4d import ROLES, VISION_TOKENS, Record
from app.data.frame_cache import load_clip, plan_clip
from app.data.video import VideoError

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"
# Token sequences are padded; vision inputs (named as below) are concatenated along dim 0; other keys a
# tokenizer may add (e.g. token_type_ids) are dropped since neither model family reads them.


def _is_vision_key(key: str) -> bool:
    return key.startswith("pixel_values") or key.endswith("_grid_thw")

log = logging.getLogger(__name__)


def build_messages(record: Record, upto: int | None = None) -> list[dict]:
    """ChatML messages for the processor's template; ``upto=k`` stops before the k-th (0-based) gpt turn.

    ``record.system`` (when set) is the first, system message. The video part replaces the record's one vision
    placeholder (``<image>`` or ``<video>``) where it stands; a record without one gets the video at the start of
    its first human turn.
    """
    turns = record.turns
    if upto is not None:
        gpt_positions = [i for i, t in enumerate(turns) if t.role == "gpt"]
        if not 0 <= upto < len(gpt_positions):
            raise ValueError(f"record {record.id}: gpt turn {upto} asked, it has {len(gpt_positions)}")
        turns = turns[: gpt_positions[upto]]
    tags = [(i, tag) for i, t in enumerate(record.turns) for tag in VISION_TOKENS for _ in range(t.value.count(tag))]
    if len(tags) > 1:
        raise ValueError(f"record {record.id}: {len(tags)} vision placeholders; a record has one video")
    if any(record.turns[i].role != "human" for i, _ in tags):
        raise ValueError(f"record {record.id}: {tags[0][1]} in a gpt turn; the video can only go in a human turn")
    tagged, tag = tags[0] if tags else (None, None)
    video_turn = tagged if tagged is not None else next(i for i, t in enumerate(record.turns) if t.role == "human")

    messages: list[dict] = [{"role": "system", "content": record.system}] if record.system else []
    for i, turn in enumerate(turns):
        role = ROLES[turn.role]
        if i != video_turn:
            messages.append({"role": role, "content": turn.value})
            continue
        before, _, after = turn.value.partition(tag) if tag is not None else ("", "", turn.value)
        # Only the newlines that separate the tag from the text go: the template places the video itself.
        before, after = before.rstrip("\n"), after.lstrip("\n")
        parts: list[dict] = [{"type": "text", "text": before}] if before else []
        parts.append({"type": "video"})
        if after:
            parts.append({"type": "text", "text": after})
        messages.append({"role": role, "content": parts})
    return messages


def _reply_spans(messages: list[dict], processor: Any, text: str) -> list[tuple[int, int]]:
    """Character spans in ``text`` of each assistant reply's content plus its closing ``<|im_end|>``."""
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = processor.apply_chat_template(messages[:k], add_generation_prompt=True)
        upto = processor.apply_chat_template(messages[: k + 1])
        # Offsets from prefix renders are only valid if the template renders each message independently.
        if not (text.startswith(head) and text.startswith(upto)):
            raise ValueError("the chat template does not render conversation prefixes as prefixes of the whole")
        content = message["content"]
        start = text.find(content, len(head), len(upto))
        if start < 0:
            raise ValueError(f"assistant reply {content!r} not found verbatim in the rendered template")
        end = start + len(content)
        if text.startswith(END_OF_TURN, end):
            end += len(END_OF_TURN)
        spans.append((start, end))
    return spans


def _video_placeholder(processor: Any) -> str:
    return processor.tokenizer.convert_ids_to_tokens(processor.video_token_id)


def _encode(text: str, frames: np.ndarray, processor: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Processor output for one sample (batch dim dropped from token tensors) and the token offsets."""
    out = processor(text=[text], videos=[frames], padding=False, return_offsets_mapping=True)
    offsets = out.pop("offset_mapping")[0]
    encoded = {k: v for k, v in out.items() if _is_vision_key(k)}
    encoded["input_ids"] = out["input_ids"][0]
    encoded["attention_mask"] = out["attention_mask"][0]
    return encoded, offsets


def encode_for_training(record: Record, frames: np.ndarray, processor: Any) -> dict[str, torch.Tensor]:
    """``input_ids``, ``labels`` (1-D; -100 except assistant replies + ``<|im_end|>``) and the vision inputs."""
    messages = build_messages(record)
    text = processor.apply_chat_template(messages)
    spans = _reply_spans(messages, processor, text)
    encoded, offsets = _encode(text, frames, processor)
    input_ids = encoded["input_ids"].long()

    # Offsets refer to the expanded text, where the one placeholder became n copies: shift spans after it.
    placeholder = _video_placeholder(processor)
    at = text.find(placeholder)
    n_vision = int((input_ids == processor.video_token_id).sum())
    shift = (n_vision - 1) * len(placeholder)

    def moved(x: int) -> int:
        return x + shift if at >= 0 and x > at else x

    starts = offsets[:, 0]
    keep = torch.zeros_like(input_ids, dtype=torch.bool)
    for lo, hi in spans:
        keep |= (starts >= moved(lo)) & (starts < moved(hi))
    keep &= input_ids != processor.video_token_id  # belt and braces: vision positions never carry a label
    labels = torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    encoded.pop("attention_mask", None)  # the collator rebuilds it with the padding
    return {**encoded, "input_ids": input_ids, "labels": labels}


def encode_prompt(
    record: Record, frames: np.ndarray, processor: Any, gpt_index: int
) -> tuple[dict[str, torch.Tensor], str]:
    """Generation input up to gpt turn ``gpt_index`` (earlier answers as history) and that turn's reference."""
    messages = build_messages(record, upto=gpt_index)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    encoded, _ = _encode(text, frames, processor)
    encoded["input_ids"] = encoded["input_ids"].long()
    reference = [t.value for t in record.turns if t.role == "gpt"][gpt_index]
    return encoded, reference


def video_token_count(processor: Any, num_frames: int, frame_hw: tuple[int, int]) -> int:
    """Vision tokens one clip expands to, from the processor's resize rule alone (no decoding)."""
    if hasattr(processor, "tokens_per_video"):  # llava_onevision: fixed square resize, + 1 newline token
        return int(processor.tokens_per_video(num_frames))
    image_processor = processor.image_processor
    groups = -(-num_frames // image_processor.temporal_patch_size)
    return groups * int(image_processor.tokens_per_frame(*frame_hw))


def sequence_length(record: Record, processor: Any, num_frames: int, frame_hw: tuple[int, int]) -> int:
    """Exact ``len(encode_for_training(...)["input_ids"])`` for frames of size ``frame_hw`` = (height, width)."""
    text = processor.apply_chat_template(build_messages(record))
    ids = processor.tokenizer(text)["input_ids"]
    placeholders = sum(1 for i in ids if i == processor.video_token_id)
    if placeholders != 1:
        raise ValueError(f"record {record.id}: expected one video placeholder in the rendered text, got {placeholders}")
    return len(ids) - 1 + video_token_count(processor, num_frames, frame_hw)


def filter_too_long(
    records: Sequence[Record], processor: Any, data_cfg: DataConfig
) -> tuple[list[Record], list[tuple[str, int]]]:
    """Records that fit ``data_cfg.max_seq_len``, and (id, length) of those that do not (never truncated).

    Lengths follow each clip's own geometry (a 16:9 clip and a portrait one give different token counts).
    A clip that cannot be probed is kept: the dataset drops it at decode time, counted there.
    """
    kept, skipped = [], []
    for record in records:
        try:
            _, num_frames, hw = plan_clip(record.video, data_cfg, record.info)
        except VideoError:
            kept.append(record)
            continue
        length = sequence_length(record, processor, num_frames, hw)
        if length > data_cfg.max_seq_len:
            skipped.append((record.id, length))
        else:
            kept.append(record)
    return kept, skipped


class VideoQADataset(Dataset):
    """Decodes frames on access (through the frame cache when ``data.frame_cache`` is on); an undecodable clip
    yields None so one bad file does not end a long run."""

    def __init__(self, records: Sequence[Record], data_cfg: DataConfig, processor: Any) -> None:
        self.records = list(records)
        self.data_cfg = data_cfg
        self.processor = processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        record = self.records[i]
        try:
            frames = load_clip(record.video, self.data_cfg, record.info)
        except VideoError as exc:
            log.warning("skipping record %s: %s", record.id, exc)
            return None
        return {**encode_for_training(record, frames, self.processor), "index": i}


# Tensors up to this size cross from a loader worker inside the pickle; larger ones through shared memory.
_INLINE_BYTES = 256 * 1024


def _rebuild_batch(keys: list[str], inline: dict[str, np.ndarray], shared: dict[str, torch.Tensor]) -> dict:
    return {k: torch.from_numpy(inline[k]) if k in inline else shared[k] for k in keys}


class Batch(dict):
    """A collated batch; in the main process it unpickles as a plain dict.

    A DataLoader worker hands every tensor over through shared memory, and the main process fetches each
    one's file descriptor from the worker with a socket round trip: with six tensors per batch that was ~2 ms
    of every tiny-CPU step (benchmarks/RESULTS.md P2). Small tensors (ids, labels, masks, grids) travel
    inside the pickle instead, so only the pixels take the shared-memory path.
    """

    def __reduce__(self):
        inline = {k: v.numpy() for k, v in self.items()
                  if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16  # numpy has no bfloat16
                  and v.numel() * v.element_size() <= _INLINE_BYTES}
        shared = {k: v for k, v in self.items() if k not in inline}
        return (_rebuild_batch, (list(self), inline, shared))


class TrainCollator:
    """Pads a list of encoded samples (None = dropped sample) into one batch.

    ``input_ids`` padded with ``pad_token_id``, ``attention_mask`` 0 and ``labels`` -100 on pads; every vision
    tensor concatenated along dim 0 in batch order (OV-1.5: patch rows and ``video_grid_thw`` rows; llava_onevision:
    ``(1, frames, 3, S, S)`` per sample -> ``(B, frames, 3, S, S)``). ``index`` holds the dataset indices; pop it
    before calling the model. A batch whose samples were all dropped comes back as None.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        # Shared memory: DataLoader workers run the collator in other processes, and their drops must count here.
        self._dropped = multiprocessing.Value("q", 0)

    @property
    def dropped(self) -> int:
        return int(self._dropped.value)

    def _pad(self, seqs: list[torch.Tensor], value: int) -> torch.Tensor:
        longest = max(len(s) for s in seqs)
        out = torch.full((len(seqs), longest), value, dtype=seqs[0].dtype)
        for row, s in enumerate(seqs):
            if self.padding_side == "right":
                out[row, : len(s)] = s
            else:
                out[row, longest - len(s) :] = s
        return out

    def __call__(self, samples: list[dict[str, Any] | None]) -> Batch | None:
        kept = [s for s in samples if s is not None]
        if len(kept) < len(samples):
            with self._dropped.get_lock():
                self._dropped.value += len(samples) - len(kept)
        if not kept:
            return None
        ids = [s["input_ids"] for s in kept]
        batch = {
            "input_ids": self._pad(ids, self.pad_token_id),
            "attention_mask": self._pad([torch.ones_like(x) for x in ids], 0),
        }
        if all("labels" in s for s in kept):
            batch["labels"] = self._pad([s["labels"] for s in kept], IGNORE_INDEX)
        for key in [k for k in kept[0] if _is_vision_key(k)]:
            batch[key] = torch.cat([s[key] for s in kept], dim=0)
        if all("index" in s for s in kept):
            batch["index"] = torch.tensor([s["index"] for s in kept], dtype=torch.long)
        return Batch(batch)
