"""Frame sampling from video files with decord, and cheap container probing with PyAV.

`sample_frames` asks decord for only the N frames it needs (`get_batch` with those indices); decord seeks
to the keyframe before each index and decodes forward from there, so the cost grows with N and the GOP
length, not with the clip's length.

Every failure to read a file becomes a `VideoError` whose message is one line and names the file, so a
data validator can count reasons and a training run can skip a clip without a traceback. On these
machines decord raised (never crashed) on every bad input tried: empty, truncated (with the index at the
end or at the front), random bytes, text, PNG/WAV renamed to .mp4, audio-only mp4, corrupted payload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from decord import DECORDError, VideoReader, cpu

from app.errors import UserError


class VideoError(UserError):
    """A video file that cannot be used; the message is one line that starts with the file name."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool


def uniform_indices(total_frames: int, num_frames: int) -> list[int]:
    """Indices of the centres of `num_frames` equal segments of a clip with `total_frames` frames.

    When the clip is shorter than asked, indices repeat (still in order), so every sample has the same
    number of frames; use `frame_count` to find such clips if that should be reported instead.
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    step = total_frames / num_frames
    return [min(int((i + 0.5) * step), total_frames - 1) for i in range(num_frames)]


def _one_line(text: str) -> str:
    # decord's messages carry a "[hh:mm:ss] /src/file.cc:123: " prefix and sometimes a C++ stack trace.
    first = next((line for line in str(text).splitlines() if line.strip()), "") or "unknown error"
    first = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", first.strip())
    # Two decord failures whose raw text says nothing to a user; both mean the payload is damaged.
    if "Cannot create buffer source" in first:
        return "corrupt video stream: no decodable frame to learn the pixel format from"
    if "av_read_frame failed" in first:
        return "truncated or corrupt video data"
    return first.replace("Check failed: ", "")


def _diagnose(path: Path, fallback: str) -> str:
    """Why decord could not read `path`, worded for a person; PyAV gives clearer reasons than decord."""
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    import av  # only to explain a failure, and PyAV is not needed to read frames

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "cannot decode video (no video stream)"
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or _one_line(str(exc))
        return f"cannot decode video (not a readable video container: {reason}; truncated or not a video?)"
    return f"cannot decode video ({fallback})"


def _open(path: Path, size: tuple[int, int] | None = None) -> VideoReader:
    path = Path(path)
    kwargs = {}
    if size is not None:
        height, width = size
        if height < 1 or width < 1:
            raise ValueError(f"size must be positive (height, width), got {size}")
        kwargs = {"height": int(height), "width": int(width)}
    try:
        reader = VideoReader(str(path), ctx=cpu(0), num_threads=1, **kwargs)
    except (DECORDError, RuntimeError, OSError) as exc:
        raise VideoError(f"{path}: {_diagnose(path, _one_line(str(exc)))}") from None
    if len(reader) < 1:
        raise VideoError(f"{path}: cannot decode video (no frames)")
    return reader


def frame_count(path: Path) -> int:
    """Frames decord sees in the clip (reads the container index, decodes nothing)."""
    return len(_open(path))


def sample_frames(path: Path, num_frames: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """`num_frames` uniformly spaced RGB frames as uint8 (N, 3, H, W).

    `size` is (height, width); decord resizes while decoding, which is cheaper than resizing after.
    Raises VideoError for any file decord cannot read or decode.
    """
    path = Path(path)
    reader = _open(path, size)
    indices = uniform_indices(len(reader), num_frames)
    try:
        batch = reader.get_batch(indices).asnumpy()
    except (DECORDError, RuntimeError, IndexError) as exc:
        # Reached when the index is intact but the payload is not, e.g. a truncated fast-start mp4.
        raise VideoError(f"{path}: cannot decode video ({_one_line(str(exc))})") from None
    finally:
        del reader  # release the demuxer now, not at garbage collection: loaders open many files
    if batch.ndim != 4 or batch.shape[0] != num_frames:
        raise VideoError(f"{path}: cannot decode video (got frames of shape {batch.shape})")
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.uint8)


def probe_video(path: Path) -> VideoInfo:
    """Frame count and fps as decord sees them (what sampling uses); size and audio from the container."""
    path = Path(path)
    reader = _open(path)
    num_frames, fps = len(reader), float(reader.get_avg_fps())
    del reader
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]  # decord opened it, so there is one
            width, height = stream.codec_context.width, stream.codec_context.height
            has_audio = bool(container.streams.audio)
    except (av.FFmpegError, IndexError) as exc:
        raise VideoError(f"{path}: cannot probe container ({_one_line(str(exc))})") from None
    return VideoInfo(num_frames=num_frames, fps=fps, width=width, height=height, has_audio=has_audio)
