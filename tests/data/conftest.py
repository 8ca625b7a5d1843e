"""Shared fixtures for the data tests: one small generated sample set and a folder of broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from media_helpers import write_audio_only_mp4

from app.data.synthetic import SampleSummary, make_sample_set, write_clip


@pytest.fixture(scope="session")
def sample_set(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    return make_sample_set(
        tmp_path_factory.mktemp("sample"),
        clips=8,
        seed=0,
        frames=16,
        size=112,
        fps=8,
        progress=False,
    )


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory: pytest.TempPathFactory, sample_set: SampleSummary) -> dict[str, Path]:
    """Broken inputs by name; each is a real file on disk, made the way such files appear in practice."""
    d = tmp_path_factory.mktemp("bad")
    good = (sample_set.video_folder / "clip_0000.mp4").read_bytes()
    files = {
        "zero_byte": d / "zero_byte.mp4",
        "truncated": d / "truncated.mp4",
        "text": d / "notes.mp4",
        "audio_only": d / "audio_only.mp4",
        "no_audio": d / "no_audio.mp4",
        "text_wav": d / "notes.wav",
        "garbage_mp3": d / "garbage.mp3",
    }
    files["zero_byte"].write_bytes(b"")
    files["truncated"].write_bytes(good[: int(len(good) * 0.3)])
    files["text"].write_text("this is a shopping list, not a video\n")
    write_audio_only_mp4(files["audio_only"])
    write_clip(files["no_audio"], np.full((8, 64, 64, 3), 100, dtype=np.uint8), 8, None)
    files["text_wav"].write_text("RIFF? no, just text\n")
    files["garbage_mp3"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return files
