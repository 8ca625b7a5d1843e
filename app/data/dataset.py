"""The training dataset: a record's frames decoded on access and encoded for training."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from app.config import DataConfig
from app.data.conversation import encode_for_training
from app.data.ego4d import Record
from app.data.frame_cache import load_clip
from app.data.video import VideoError

log = logging.getLogger(__name__)


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
