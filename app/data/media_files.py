"""Real media files the synthetic set (and the tests' broken-media corpus) are made of: H.264 mp4 clips with an
optional AAC track, and mp3 speech stand-ins, written with PyAV exactly as a camera or an editor would."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

AUDIO_SR = 16000


def tone(hz: float, seconds: float, sr: int = AUDIO_SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr)), dtype=np.float32) / sr
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, pcm: np.ndarray) -> None:
    # Encoders such as aac and mp3 want exactly frame_size samples per frame (the last may be short).
    step = stream.codec_context.frame_size or 1024
    for pts in range(0, len(pcm), step):
        chunk = np.ascontiguousarray(pcm[pts : pts + step], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = stream.codec_context.sample_rate
        frame.pts = pts
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_clip(path: Path, video: np.ndarray, fps: int, audio: np.ndarray | None, sr: int = AUDIO_SR) -> None:
    """Write RGB frames (T, H, W, 3) as H.264/yuv420p and, when given, a mono AAC track."""
    height, width = video.shape[1:3]
    with av.open(str(path), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        # A keyframe every second keeps random access cheap for frame sampling. One thread, and no MB-tree: at
        # sizes that are not a multiple of 16 (the demo's 56 px) its analysis read memory x264 had not written,
        # and about one encode in three of the same frames differed (2026-12-02); without it, none in 80.
        vstream.codec_context.gop_size = fps
        vstream.codec_context.options = {"preset": "veryfast", "crf": "20", "threads": "1", "x264-params": "mbtree=0"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sr, layout="mono")
        for frame in video:
            container.mux(vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(vstream.encode(None))
        if astream is not None:
            _encode_audio(container, astream, audio)


def write_mp3(path: Path, pcm: np.ndarray, sr: int = AUDIO_SR) -> None:
    with av.open(str(path), mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sr, layout="mono")
        stream.codec_context.format = "fltp"  # its default is s32p; float keeps one path for both codecs
        _encode_audio(container, stream, pcm)
