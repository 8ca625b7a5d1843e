"""Audio loading: float32 mono at a fixed rate from audio files or from a video container's audio track.

Plain audio files go through librosa (soundfile underneath reads wav/flac/ogg/mp3 here). librosa cannot
open video containers on these machines (no ffmpeg binary for audioread), so any other file (mp4, mkv, avi,
m4v, ts, ...) -- and a plain audio file soundfile cannot parse -- has its first audio stream decoded and
resampled with PyAV: whatever FFmpeg opens is readable, decided by trying rather than by a list of suffixes.
Every failure becomes an `AudioError` with a one-line message that starts with the file name.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import librosa
import numpy as np

from app.data.video import native_output_captured
from app.errors import UserError
from app.io import one_line

# Read with librosa/soundfile; every other file is tried as a container by PyAV (FFmpeg decides by content).
AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".flac", ".ogg"})


class AudioError(UserError):
    """An audio source that cannot be used; the message is one line that starts with the file name."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def _load_from_container(path: Path, sr: int) -> np.ndarray:
    chunks: list[np.ndarray] = []
    try:
        with native_output_captured(), av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            # Planar float mono out of the resampler, so chunks concatenate without reshaping.
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=sr)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray()[0])
            for out in resampler.resample(None):  # flush what the resampler still holds
                chunks.append(out.to_ndarray()[0])
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, RuntimeError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({one_line(exc)})") from None
    if not chunks:
        raise AudioError(f"{path}: cannot decode audio (audio stream has no samples)")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _load_with_librosa(path: Path, sr: int) -> np.ndarray:
    try:
        # libmpg123 under soundfile writes "Note: Illegal Audio-MPEG-Header ..." to fd 2 on a damaged mp3.
        with warnings.catch_warnings(), native_output_captured():
            # librosa warns before falling back to audioread; the outcome is reported by the caller instead.
            warnings.filterwarnings("ignore", message="PySoundFile failed")
            warnings.filterwarnings("ignore", category=FutureWarning, module="librosa")
            # audioread (imported lazily on first load) imports stdlib modules deprecated in 3.13.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="audioread")
            samples, _ = librosa.load(path, sr=sr, mono=True)
    except Exception as exc:  # soundfile, audioread and numpy all raise their own types here
        # audioread's NoBackendError has no text: soundfile could not parse it, and no ffmpeg here.
        reason = "not a readable audio file" if type(exc).__name__ == "NoBackendError" else one_line(exc)
        raise AudioError(f"{path}: cannot decode audio ({reason})") from None
    return samples


def load_audio(path: Path, sr: int = 16000) -> np.ndarray:
    """Samples of `path` as float32, mono, 1-D, at `sr` Hz.

    Plain audio files (.wav/.mp3/.flac/.ogg) are read with librosa; any other file (mp4, mkv, avi, m4v, ...),
    or a plain audio file librosa cannot parse, gives the first audio track of whatever container PyAV opens.
    Raises AudioError for missing, empty or corrupt files and for containers without an audio stream.
    """
    path = Path(path)
    if sr < 1:
        raise ValueError(f"sr must be positive, got {sr}")
    _check_file(path)
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        try:
            samples = _load_with_librosa(path, sr)
        except AudioError as first:
            # The name may not match the content (an AAC track saved as .mp3); FFmpeg reads by content.
            try:
                samples = _load_from_container(path, sr)
            except AudioError:
                raise first from None
    else:
        samples = _load_from_container(path, sr)
    if samples.size == 0:
        raise AudioError(f"{path}: cannot decode audio (no samples)")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _probe_container(path: Path) -> None:
    try:
        with native_output_captured(), av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, RuntimeError) as exc:
        raise AudioError(f"{path}: cannot open container ({one_line(exc)})") from None


def probe_audio(path: Path) -> None:
    """Cheap readability check (header only, nothing decoded); raises AudioError naming the file."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        _probe_container(path)
        return
    import soundfile

    try:
        with native_output_captured():
            info = soundfile.info(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or TypeError by version
        # libsndfile's text repeats the path and, for bytes it cannot parse, claims the (existing) file is absent.
        reason = one_line(exc).split("': ", 1)[-1].rstrip(".")
        if "does not exist" in reason:
            reason = "not a readable audio file"
        first = AudioError(f"{path}: cannot decode audio ({reason})")
        try:
            _probe_container(path)  # what load_audio falls back to must pass the probe too
        except AudioError:
            raise first from None
        return
    if info.frames == 0:
        raise AudioError(f"{path}: cannot decode audio (no samples)")
