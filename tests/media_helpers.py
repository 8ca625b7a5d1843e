"""Broken media made the way it appears in practice, shared by the data tests and the bad-input corpus."""

from __future__ import annotations

from pathlib import Path

import av

from app.data.synthetic import tone


def write_audio_only_mp4(path: Path, seconds: float = 1.0) -> None:
    """An mp4 holding an AAC track and no video stream (e.g. an audio export given a video's name)."""
    pcm = tone(440.0, seconds)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        for pts in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, pts : pts + 1024].copy(), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
