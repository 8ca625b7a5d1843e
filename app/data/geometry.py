"""Frame geometry: the size a frame is decoded at, and how many frames a clip gives.

One place for the rule both the loader (decode size) and the processor (patch grid) follow: Qwen2-VL's
`smart_resize`, which LLaVA-OneVision-1.5 was trained with. Aspect ratio is kept; both sides become multiples
of patch x merge (28); the area lands in [min_pixels, max_pixels]. Frames are never squashed to a square.
"""

from __future__ import annotations

import math

# LLaVA-OneVision-1.5's RICE ViT: 14 px patches, 2x2 merge. The processor reads its own values from
# preprocessor_config.json; this is what the data side decodes for when it has no processor at hand.
GRID_FACTOR = 28


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within [min_pixels, max_pixels], aspect kept."""
    if min(height, width) < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {height}x{width}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frames_for(duration: float, num_frames: int, fps: float | None, min_frames: int, max_frames: int) -> int:
    """``num_frames``, or with ``fps`` set, that many frames per second of the clip clamped to [min, max]."""
    if fps is None:
        return num_frames
    return int(min(max(round(duration * fps), min_frames), max_frames))


def clip_plan(info, data_cfg, factor: int = GRID_FACTOR) -> tuple[int, tuple[int, int]]:
    """(frames, (height, width)) one clip is decoded to, from its `VideoInfo` and the `data` config section."""
    num_frames = frames_for(info.duration, data_cfg.num_frames, data_cfg.fps, data_cfg.min_frames, data_cfg.max_frames)
    size = smart_resize(info.height, info.width, factor, data_cfg.min_pixels, data_cfg.max_pixels)
    return num_frames, size
