"""Records -> token ids: chat messages, label masking and exact sequence lengths, for training and for prompts.

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

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from app.config import DataConfig
from app.data.ego4d import ROLES, VISION_TOKENS, Record
from app.data.frame_cache import plan_clip
from app.data.video import VideoError

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"


def is_vision_key(key: str) -> bool:
    """Vision inputs (concatenated along dim 0 when batched); other keys a tokenizer may add (token_type_ids) are
    dropped since neither model family reads them."""
    return key.startswith("pixel_values") or key.endswith("_grid_thw")


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
    encoded = {k: v for k, v in out.items() if is_vision_key(k)}
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
