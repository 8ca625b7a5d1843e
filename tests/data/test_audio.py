"""Audio loading from generated wav/mp3 files and mp4 tracks, and the errors for unusable sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.data.audio import AudioError, load_audio
from app.data.synthetic import SampleSummary


def _check_audio(samples: np.ndarray, seconds: float) -> None:
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert samples.size == pytest.approx(seconds * 16000, rel=0.10)
    assert 0.1 < float(np.abs(samples).max()) <= 1.0  # the generated tone, not silence or clipping


def test_audio_from_mp4_track(sample_set: SampleSummary) -> None:
    samples = load_audio(sample_set.video_folder / "clip_0000.mp4")
    _check_audio(samples, sample_set.frames / sample_set.fps)


def test_audio_resamples_the_mp4_track(sample_set: SampleSummary) -> None:
    samples = load_audio(sample_set.video_folder / "clip_0000.mp4", sr=8000)
    assert samples.size == pytest.approx(sample_set.frames / sample_set.fps * 8000, rel=0.10)


@pytest.mark.parametrize("ext", ["wav", "mp3"])
def test_audio_from_separate_files(sample_set: SampleSummary, ext: str) -> None:
    records = json.loads(sample_set.data_path.read_text())
    paths = [sample_set.out_dir / r["audio"] for r in records if r.get("audio", "").endswith(ext)]
    assert paths, f"the sample set has no .{ext} audio"
    for path in paths:
        _check_audio(load_audio(path), sample_set.frames / sample_set.fps)


def test_audio_from_separate_file_matches_clip_track(sample_set: SampleSummary) -> None:
    # Same tone in both: the dominant frequency of the wav equals the mp4 track's.
    record = next(r for r in json.loads(sample_set.data_path.read_text()) if r.get("audio", "").endswith("wav"))

    def peak_hz(x: np.ndarray) -> float:
        return float(np.argmax(np.abs(np.fft.rfft(x[:16000]))))  # a 1 s window: bins are 1 Hz apart

    wav = load_audio(sample_set.out_dir / record["audio"])
    track = load_audio(sample_set.video_folder / record["video"])
    assert peak_hz(wav) == pytest.approx(peak_hz(track), abs=2.0)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("no_audio", "no audio stream"),
        ("zero_byte", "empty file"),
        ("truncated", "cannot decode audio"),
        ("text", "cannot decode audio"),
        ("text_wav", "cannot decode audio"),
        ("garbage_mp3", "cannot decode audio"),
    ],
)
def test_unusable_audio_raises_one_line_error(bad_files: dict[str, Path], name: str, reason: str) -> None:
    path = bad_files[name]
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message and reason in message


def test_missing_audio_raises(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="gone.wav: file not found"):
        load_audio(tmp_path / "gone.wav")
