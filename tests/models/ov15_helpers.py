"""Shared helpers for the model tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np


def random_video(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, 3, height, width), dtype=np.uint8)


def qa_messages(kind: str = "video", answer: str | None = "red") -> list[dict]:
    question = {"type": "text", "text": "What colour is the moving object?"}
    messages = [{"role": "user", "content": [{"type": kind}, question]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages
