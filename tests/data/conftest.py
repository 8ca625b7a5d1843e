"""Shared fixtures for the data tests: one small generated sample set and a folder of broken files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from app.data.synthetic import SampleSummary, make_sample_set, tone, write_clip


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


def _write_audio_only_mp4(path: Path) -> None:
    pcm = tone(440.0, 1.0)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        for pts in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, pts : pts + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


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
    _write_audio_only_mp4(files["audio_only"])
    write_clip(files["no_audio"], np.full((8, 64, 64, 3), 100, dtype=np.uint8), 8, None)
    files["text_wav"].write_text("RIFF? no, just text\n")
    files["garbage_mp3"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return files
