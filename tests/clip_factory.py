"""Clips like the ones users bring, encoded with PyAV: any codec/container/bit depth, explicit (VFR) timestamps,
rotation metadata. Every frame carries its own index as an 8-bit pattern (bright blocks across the top half) and
a red block in its bottom-left corner, so a test can read which frame came back and which way is up.

Importable from every test folder: the root conftest puts tests/ on sys.path.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

RED = (200, 30, 30)


def pattern(index: int, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: bit b of ``index`` lights block b of the top half; red block bottom-left."""
    frame = np.full((height, width, 3), 40, np.uint8)
    block = width // 8
    for bit in range(8):
        if (index >> bit) & 1:
            frame[: height // 2, bit * block : (bit + 1) * block] = 220
    frame[height // 2 :, : width // 4] = RED
    return frame


def read_index(frame_chw: np.ndarray) -> int:
    """The index `pattern` drew into an upright frame (C, H, W), read from the centre of each block."""
    frame = frame_chw.transpose(1, 2, 0).astype(np.float32)
    height, width = frame.shape[:2]
    block = width / 8
    top = frame[: max(height // 2 - 1, 1)]
    return sum(1 << b for b in range(8)
               if top[:, int(b * block + block / 4) : max(int((b + 1) * block - block / 4), int(b * block) + 1)].mean()
               > 130)


def red_corner(frame_chw: np.ndarray) -> str:
    """Which quadrant holds the red block: 'bottom-left' for an upright frame."""
    f = frame_chw.astype(np.int16)
    red = (f[0] > 150) & (f[1] < 90) & (f[2] < 90)
    ys, xs = np.nonzero(red)
    height, width = red.shape
    return f"{'bottom' if ys.mean() > height / 2 else 'top'}-{'left' if xs.mean() < width / 2 else 'right'}"


def encode(
    path: Path,
    frames: int = 30,
    width: int = 160,
    height: int = 96,
    codec: str = "libx264",
    fps: int = 30,
    times: list[float] | None = None,
    pix_fmt: str = "yuv420p",
    container_format: str | None = None,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
    codec_tag: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write ``frames`` pattern frames; ``times`` (seconds) gives each frame's presentation time (VFR)."""
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec_tag:
            stream.codec_tag = codec_tag
        if codec not in ("mjpeg",):
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        opts = {"threads": "1"}
        if codec == "libx264":
            opts.update(preset="veryfast", crf="18")
        elif codec == "libx265":
            opts.update({"preset": "ultrafast", "x265-params": "log-level=none"})
        elif codec == "libsvtav1":
            opts.update(preset="12", crf="20")
        elif codec == "libvpx-vp9":
            opts.update(deadline="realtime", crf="20", **{"b:v": "0"})
        opts.update(options or {})
        stream.codec_context.options = opts
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, height, width), format="rgb24")
            if codec != "mjpeg":
                t = times[i] if times is not None else i / fps
                frame.pts, frame.time_base = int(round(t * 1000)), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
