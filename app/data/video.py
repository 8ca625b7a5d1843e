"""Reading frames from real video files: decord first, PyAV where decord cannot, frames picked in *time*.

What a clip gives the model:
- Frames sit at the centres of N equal segments of the clip's presentation time (the frame shown at each
  target time), so a variable-frame-rate clip is covered evenly, not bunched where its frames are dense.
- Frames are decoded straight at their target size (`geometry.smart_resize` of the upright picture): aspect
  ratio kept, and decoding cost follows the target size, not the source's 4K.
- Rotation metadata is applied (a phone clip filmed upright comes out upright).

Decoders: decord reads only the frames it needs (`get_batch`), which is what keeps a 10-minute clip cheap.
Its bundled FFmpeg 4.1 lacks some decoders (AV1 among them); for those, and for any clip decord fails on,
PyAV (FFmpeg 7) seeks to the keyframe before each target time and decodes forward. `VideoInfo.decoder`
says which one a clip needs, so the data report can count them.

Damaged files: a clip whose decodable span is well short of what its container declares (a truncated
download) is refused with `truncated: X of Y s decodable`, never used as a shorter clip.

Every failure is a `VideoError` whose message is one line that names the file. decord's C++ logging and
FFmpeg's own messages are kept off the terminal: decord prints from C++ straight to file descriptor 2,
which is why that descriptor is redirected around every decord call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import UserError
from app.io import one_line, write_atomic

DECORD, PYAV = "decord", "pyav"


class VideoError(UserError):
    """A video file that cannot be used; the message is one line that starts with the file name."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # frames the decoder reaches
    fps: float  # average over the decodable span
    width: int  # upright picture (rotation applied)
    height: int
    has_audio: bool
    start: float  # presentation time of the first frame, seconds
    duration: float  # decodable span, seconds (first frame's start .. last frame's end)
    declared_duration: float | None  # what the container says; None when it does not say
    decoder: str  # DECORD or PYAV
    codec: str
    rotation: int = 0  # degrees, as stored in the file


# --- keeping native libraries quiet --------------------------------------------------------------------------------
_quiet_lock = threading.RLock()
_quiet_depth = 0


@contextlib.contextmanager
def native_output_captured() -> Iterator[None]:
    """Send what C/C++ code writes to fd 2 into a scratch file while the block runs (discarded after).

    decord logs errors from C++ (`[12:00:00] /github/workspace/src/video/video_reader.cc:83: ERROR opening`)
    and its FFmpeg prints `moov atom not found`; neither can be switched off from Python. The reason a user
    sees comes from the exception instead, reworded by `_decoder_reason`.
    """
    global _quiet_depth
    with _quiet_lock:
        _quiet_depth += 1
        if _quiet_depth > 1:
            try:
                yield
            finally:
                _quiet_depth -= 1
            return
        import sys

        for stream in (sys.stderr, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = os.dup(2)
        try:
            with tempfile.TemporaryFile() as scratch:
                os.dup2(scratch.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)
            _quiet_depth -= 1


def _decord():
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg's av_log; the C++ LOG lines need the fd redirect
    return decord


def _decoder_reason(text: str) -> str:
    """A decoder's message as one line a user can read (see `one_line`), in words where decord's say nothing."""
    first = one_line(text) or "unknown error"
    # decord failures whose raw text says nothing to a user; all mean the payload is damaged.
    if "Cannot create buffer source" in first:
        return "corrupt video stream: no decodable frame to learn the pixel format from"
    if "av_read_frame failed" in first or "avcodec_send_packet" in first:
        return "truncated or corrupt video data"
    if "cannot find video stream" in first:
        return "no video stream this decoder can read"
    return first.replace("Check failed: ", "").strip() or "unknown error"


# --- time sampling -------------------------------------------------------------------------------------------------
def segment_centres(start: float, duration: float, num_frames: int) -> np.ndarray:
    """Centres (seconds) of ``num_frames`` equal segments of [start, start + duration]."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return start + (np.arange(num_frames) + 0.5) * (duration / num_frames)


def indices_at_times(starts: np.ndarray, times: np.ndarray) -> list[int]:
    """Index of the frame on screen at each time: the last frame that starts at or before it."""
    idx = np.searchsorted(np.asarray(starts), np.asarray(times), side="right") - 1
    return np.clip(idx, 0, len(starts) - 1).astype(int).tolist()


def uniform_indices(total_frames: int, num_frames: int) -> list[int]:
    """Indices of the centres of ``num_frames`` equal segments of a constant-rate clip of ``total_frames``."""
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    return indices_at_times(np.arange(total_frames), segment_centres(0.0, total_frames, num_frames))


# --- probing -------------------------------------------------------------------------------------------------------
def _diagnose(path: Path) -> str | None:
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a file"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return None


def _video_stream(container):
    """The clip's moving picture: the first video stream that is not cover art (an attached picture)."""
    import av

    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _container_facts(path: Path) -> dict:
    """Size, rotation, audio, codec and declared duration from PyAV (decodes the first frame for rotation)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container)
            if stream is None:
                raise VideoError(f"{path}: cannot decode video (no video stream)")
            declared = None
            if stream.duration and stream.time_base:
                declared = float(stream.duration * stream.time_base)
            elif container.duration:
                declared = container.duration / av.time_base
            first = next(container.decode(stream), None)
            if first is None:
                raise VideoError(f"{path}: cannot decode video (no decodable frame)")
            rotation = int(getattr(first, "rotation", 0) or 0) % 360
            width, height = first.width, first.height
            if rotation in (90, 270):
                width, height = height, width
            return {"width": width, "height": height, "rotation": rotation, "declared": declared,
                    "has_audio": bool(container.streams.audio), "codec": stream.codec_context.name}
    except VideoError:
        raise
    except (av.FFmpegError, ValueError, RuntimeError, IndexError, StopIteration) as exc:
        reason = getattr(exc, "strerror", None) or _decoder_reason(str(exc))
        raise VideoError(f"{path}: cannot decode video (not a readable video container: {reason}; "
                         "truncated or not a video?)") from None


def _pyav_packet_times(path: Path) -> np.ndarray:
    """Presentation times (s) of every video packet, in display order; reads packets, decodes nothing."""
    import av

    times = []
    with av.open(str(path)) as container:
        stream = _video_stream(container)
        base = stream.time_base
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.size:
                    times.append(float(packet.pts * base))
        except av.FFmpegError:
            pass  # a damaged tail: what was read so far is the decodable part (judged by the caller)
    return np.sort(np.asarray(times, dtype=np.float64))


def _span(starts: np.ndarray, last_end: float | None = None) -> tuple[float, float]:
    """(start, duration) of a clip from its frame start times; the last frame lasts the median frame gap."""
    first = float(starts[0])
    if last_end is None:
        gap = float(np.median(np.diff(starts))) if len(starts) > 1 else 1 / 30
        last_end = float(starts[-1]) + gap
    return first, max(last_end - first, 1e-3)


def probe_video(path: Path, min_decodable_fraction: float | None = None) -> VideoInfo:
    """What a clip holds and which decoder reads it; raises VideoError for an unusable (or truncated) clip.

    ``min_decodable_fraction``: refuse a clip whose decodable span is below this share of the container's
    declared duration (None: do not check).
    """
    path = Path(path)
    reason = _diagnose(path)
    if reason:
        raise VideoError(f"{path}: {reason}")
    with native_output_captured():
        facts = _container_facts(path)
        decoder, starts, last_end = DECORD, None, None
        try:
            decord = _decord()
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            if len(reader) > 0:
                stamps = reader.get_frame_timestamp(list(range(len(reader))))
                starts, last_end = np.asarray(stamps[:, 0], dtype=np.float64), float(stamps[-1, 1])
            del reader
        except Exception:  # noqa: BLE001 - any decord failure means: let PyAV try
            starts = None
        if starts is None or len(starts) == 0:
            decoder, last_end = PYAV, None
            starts = _pyav_packet_times(path)
            if len(starts) == 0:
                raise VideoError(f"{path}: cannot decode video (no frames)")
    start, duration = _span(starts, last_end)
    if max(facts["width"], facts["height"]) > 200 * min(facts["width"], facts["height"]):
        # smart_resize's limit: such a strip cannot be cut into 28 px patches without losing one side entirely
        raise VideoError(f"{path}: unsupported frame size {facts['width']}x{facts['height']} (aspect ratio over 200)")
    info = VideoInfo(
        num_frames=len(starts), fps=len(starts) / duration, width=facts["width"], height=facts["height"],
        has_audio=facts["has_audio"], start=start, duration=duration, declared_duration=facts["declared"],
        decoder=decoder, codec=facts["codec"], rotation=facts["rotation"],
    )
    if min_decodable_fraction is not None:
        check_complete(path, info, min_decodable_fraction)
    return info


def check_complete(path: Path, info: VideoInfo, min_fraction: float) -> None:
    declared = info.declared_duration
    # A one-frame clip's "duration" is a frame's; nothing to compare against.
    if declared and info.num_frames > 1 and info.duration < min_fraction * declared:
        raise VideoError(f"{path}: truncated: {info.duration:.1f} of {declared:.1f} s decodable")


_PROBED: dict[tuple, VideoInfo] = {}


def probe_cached(path: Path, min_decodable_fraction: float | None = None, cache_dir: Path | None = None) -> VideoInfo:
    """`probe_video`, remembered for a file's (path, size, mtime): per process, and across runs in `cache_dir`.

    baseline, train and evaluate each check every clip before using it; with `cache_dir` (the frame cache's
    `probes/` folder) only the first run pays for probing, the others read one small JSON per clip. Failures are
    not stored, so a repaired file is probed again.
    """
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, min_decodable_fraction)
    except OSError:
        return probe_video(path, min_decodable_fraction)  # words the error
    if key not in _PROBED:
        if len(_PROBED) > 100_000:
            _PROBED.clear()
        _PROBED[key] = _probe_on_disk(path, key, cache_dir) if cache_dir else probe_video(path, min_decodable_fraction)
    return _PROBED[key]


def _probe_on_disk(path: Path, key: tuple, cache_dir: Path) -> VideoInfo:
    name = hashlib.sha1(json.dumps(key).encode()).hexdigest()
    stored = Path(cache_dir) / name[:2] / f"{name}.json"
    try:
        return VideoInfo(**json.loads(stored.read_text()))
    except (OSError, ValueError, TypeError):  # not there yet, or written by another version: probe again
        pass
    info = probe_video(path, key[3])
    try:
        write_atomic(stored, json.dumps(dataclasses.asdict(info)))  # concurrent runs: the last whole file wins
    except OSError:  # a read-only cache only costs speed
        pass
    return info


def frame_count(path: Path) -> int:
    """Frames the decoder reaches in the clip (reads the container index, decodes one frame)."""
    return probe_video(path).num_frames


# --- sampling ------------------------------------------------------------------------------------------------------
def _check_size(size: tuple[int, int] | None) -> None:
    if size is not None and (size[0] < 1 or size[1] < 1):
        raise ValueError(f"size must be positive (height, width), got {size}")


def _sample_decord(path: Path, info: VideoInfo, times: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    decord = _decord()
    kwargs = {"height": int(size[0]), "width": int(size[1])} if size else {}
    with native_output_captured():
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **kwargs)
        try:
            starts = reader.get_frame_timestamp(list(range(len(reader))))[:, 0]
            batch = reader.get_batch(indices_at_times(starts, times)).asnumpy()
        finally:
            del reader  # release the demuxer now, not at garbage collection: loaders open many files
    return batch


def _to_rgb(frame, size: tuple[int, int] | None, rotation: int) -> np.ndarray:
    """One PyAV frame -> upright (H, W, 3) uint8 at ``size`` (resized before rotating: swscale does the work)."""
    if size is not None:
        height, width = size if rotation not in (90, 270) else (size[1], size[0])
        frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR")
    array = frame.to_ndarray(format="rgb24")
    # FFmpeg's display matrix angle is counter-clockwise; turning the picture upright undoes it.
    return np.ascontiguousarray(np.rot90(array, k=rotation // 90)) if rotation else array


def _timed(frames, base) -> Iterator[tuple[float, object]]:
    for frame in frames:
        if frame.pts is not None:
            yield float(frame.pts * base), frame


def _seek(container, stream, target: float) -> tuple[Iterator[tuple[float, object]], bool]:
    """Decoded (time, frame) from the keyframe at or before ``target``, and whether the seek landed there.
    Some demuxers (MPEG-TS here) land after the target or nowhere: then decoding starts from the beginning."""
    base = stream.time_base
    container.seek(int(max(target, 0.0) / base), stream=stream, backward=True, any_frame=False)
    frames = _timed(container.decode(stream), base)
    first = next(frames, None)
    if first is not None and first[0] <= target + 1e-6:
        return itertools.chain([first], frames), True
    container.seek(0)
    return _timed(container.decode(stream), base), False


# Beyond this gap to the next target, seeking beats decoding forward through the frames in between.
_DECODE_FORWARD_SECONDS = 1.0


def _sample_pyav(path: Path, info: VideoInfo, times: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """The frame on screen at each time: seek to the keyframe before it, decode forward (never the whole clip)."""
    import av

    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = _video_stream(container)
        frames, shown, ahead = None, None, None  # decoder position, frame on screen, the one after it
        seekable = True  # once a seek misses, one forward pass serves every later target
        for target in times:
            far = shown is None or target < shown[0] or target - shown[0] > _DECODE_FORWARD_SECONDS
            if frames is None or (seekable and far):
                (frames, seekable), shown, ahead = _seek(container, stream, target), None, None
            while True:
                if ahead is None:
                    ahead = next(frames, None)
                    if ahead is None:
                        break  # end of stream: the last frame stays on screen
                if ahead[0] > target and shown is not None:
                    break
                shown, ahead = ahead, None
            if shown is None:
                raise VideoError(f"{path}: cannot decode video (no frame at {target:.2f} s)")
            out.append(_to_rgb(shown[1], size, info.rotation))
    return np.stack(out)


def sample_frames(
    path: Path, num_frames: int, size: tuple[int, int] | None = None, info: VideoInfo | None = None
) -> np.ndarray:
    """``num_frames`` RGB frames at the centres of equal time segments, uint8 (N, 3, H, W).

    ``size`` is (height, width) of the upright frame (None: as stored); the decoder resizes while decoding.
    ``info`` is the clip's `probe_video` result (probed here when not given). Raises VideoError.
    """
    path = Path(path)
    _check_size(size)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    info = info or probe_video(path)
    times = segment_centres(info.start, info.duration, num_frames)
    batch, errors = None, []
    for decoder in ((DECORD, PYAV) if info.decoder == DECORD else (PYAV,)):
        try:
            batch = (_sample_decord if decoder == DECORD else _sample_pyav)(path, info, times, size)
            break
        except VideoError as exc:
            errors.append(str(exc).split(": ", 1)[-1])
        except Exception as exc:  # noqa: BLE001 - decord and FFmpeg raise many types; all mean "cannot decode"
            errors.append(f"cannot decode video ({_decoder_reason(str(exc))})")
    if batch is None:
        raise VideoError(f"{path}: {errors[0]}")
    if batch.ndim != 4 or batch.shape[0] != num_frames:
        raise VideoError(f"{path}: cannot decode video (got frames of shape {batch.shape})")
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.uint8)
