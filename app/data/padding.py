"""Encoded samples -> one padded batch, for training (right padding) and for generation prompts (left padding)."""

from __future__ import annotations

import multiprocessing
from typing import Any

import numpy as np
import torch

from app.data.conversation import IGNORE_INDEX, is_vision_key

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


class PaddingCollator:
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
        for key in [k for k in kept[0] if is_vision_key(k)]:
            batch[key] = torch.cat([s[key] for s in kept], dim=0)
        if all("index" in s for s in kept):
            batch["index"] = torch.tensor([s["index"] for s in kept], dtype=torch.long)
        return Batch(batch)
