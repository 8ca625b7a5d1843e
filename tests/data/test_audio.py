"""Audio loading from generated wav/mp3 files and mp4 tracks, and the errors for unusable sources."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
from media_helpers import write_audio_only_mp4

from app.data.audio import AudioError, load_audio, probe_audio
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


def _write_av(path: Path, container_format: str, video_codec: str, audio_codec: str, seconds: float) -> None:
    """A small clip in `container_format` with a 440 Hz mono track in `audio_codec`."""
    from app.data.synthetic import tone

    sr, fps = 16000, 8
    pcm = tone(440.0, seconds, sr)
    with av.open(str(path), mode="w", format=container_format) as container:
        vstream = container.add_stream(video_codec, rate=fps)
        vstream.width = vstream.height = 32
        vstream.pix_fmt = "yuv420p"
        astream = container.add_stream(audio_codec, rate=sr, layout="mono")
        sample_format = "s16" if audio_codec == "pcm_s16le" else "fltp"
        astream.codec_context.format = sample_format
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8), format="rgb24")
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        step = astream.codec_context.frame_size or 1024
        for pts in range(0, len(pcm), step):
            chunk = pcm[None, pts : pts + step]
            if sample_format == "s16":
                chunk = (chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=sample_format, layout="mono")
            frame.sample_rate, frame.pts = sr, pts
            container.mux(astream.encode(frame))
        container.mux(astream.encode(None))


@pytest.mark.parametrize(
    "name, container_format, video_codec, audio_codec",
    [
        ("clip.avi", "avi", "mpeg4", "libmp3lame"),
        ("pcm.avi", "avi", "mpeg4", "pcm_s16le"),
        ("clip.m4v", "ipod", "libx264", "aac"),
    ],
)
def test_audio_from_any_container_pyav_opens(
    tmp_path: Path, name: str, container_format: str, video_codec: str, audio_codec: str
) -> None:
    path = tmp_path / name
    _write_av(path, container_format, video_codec, audio_codec, seconds=1.5)
    probe_audio(path)  # what `data validate` checks must agree with what ASR then loads
    _check_audio(load_audio(path), 1.5)


def test_audio_file_named_wrongly_is_read_by_content(tmp_path: Path) -> None:
    # An AAC track saved as ".mp3": soundfile refuses it, FFmpeg reads it by its content.
    path = tmp_path / "voice.mp3"
    write_audio_only_mp4(path, seconds=1.0)
    probe_audio(path)
    _check_audio(load_audio(path), 1.0)


def test_unreadable_audio_keeps_native_output_off_the_terminal(bad_files: dict[str, Path], capfd) -> None:
    for name in ("garbage_mp3", "text_wav", "truncated", "text", "no_audio"):
        with pytest.raises(AudioError):
            load_audio(bad_files[name])
        with contextlib.suppress(AudioError):
            probe_audio(bad_files[name])
    assert capfd.readouterr().err == ""
