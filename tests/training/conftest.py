"""Training fixtures: a 40-clip synthetic set and one tiny-model cache shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def train_sets(sample40: Path, model_cache: Path, tmp_path: Path) -> list[str]:
    """--set overrides pointing a tiny run at the sample set, a shared model cache and a fresh output dir."""
    return [
        f"data.data_path={sample40 / 'Ego4D.json'}",
        f"data.video_folder={sample40 / 'videos'}",
        f"data.eval_ids_file={sample40 / 'eval_ids.txt'}",
        f"model.cache_dir={model_cache}",
        f"output_dir={tmp_path / 'results'}",
        "training.per_device_batch_size=4",
    ]
