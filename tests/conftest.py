"""Shared fixtures: a real synthetic sample set (H.264 mp4s with audio), built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sample_set(tmp_path_factory) -> Path:
    from app.data.synthetic import make_sample_set

    out = tmp_path_factory.mktemp("sample")
    make_sample_set(out, clips=12, seed=0, progress=False)
    return out


@pytest.fixture
def data_overrides(sample_set: Path) -> list[str]:
    return [
        f"data.data_path={sample_set / 'Ego4D.json'}",
        f"data.video_folder={sample_set / 'videos'}",
        f"data.eval_ids_file={sample_set / 'eval_ids.txt'}",
    ]
