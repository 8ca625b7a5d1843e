"""Decoded-frame cache: a clip's sampled, resized uint8 frames stored once on disk, reused by later epochs and runs.

An entry is one ``.npy`` file named by a hash of everything that decides its pixels: the cache format version,
the video's resolved path, size and ``mtime_ns``, the number of frames and the (height, width) asked for. Editing
or replacing a clip changes its size or mtime, so its old entry is simply never asked for again (eviction reclaims
it).

Concurrency: DataLoader workers, torchrun ranks and `data validate --warm-cache` may fill the same entry at
once. Each writer saves to its own temp file in the entry's folder and `os.replace`s it into place, which is
atomic on POSIX filesystems (NFS/Lustre included): a reader sees no file or a whole one, and racing writers
leave exactly one. Entries are not fsynced: after a power cut a file may come back short, and the loader
checks shape, dtype and length, so a damaged entry is a miss that gets rewritten, never bad pixels.

Size cap: when a process's writes push its running estimate over ``max_bytes``, it scans the folder and
deletes the least recently used entries (a hit refreshes the file's mtime) down to 90% of the cap, so
eviction runs now and then, not on every write. A reader whose file vanishes under it just decodes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from app.data.geometry import clip_plan
from app.data.video import VideoError, VideoInfo, probe_cached, sample_frames
from app.io import TMP_MARK, write_atomic

# Bumped whenever what an entry holds or how it is laid out changes (sampling rule, array layout).
# 2: frames at the centres of equal *time* segments, decoded at their aspect-keeping size (was: index, square).
FORMAT_VERSION = 2
SUFFIX = ".npy"
# A temp file this old belongs to a writer that died; eviction deletes it.
STALE_TMP_SECONDS = 3600
EVICT_TO = 0.9

Outcome = Literal["hit", "written", "decoded"]


@dataclass
class CacheStats:
    hits: int = 0
    writes: int = 0
    misses: int = 0  # decoded; a miss is also a write unless the entry could not be stored
    corrupt: int = 0
    evicted: int = 0


@dataclass
class FrameCache:
    """Frames on disk under ``root``, keyed by file identity and sampling settings; see the module notes."""

    root: Path
    max_bytes: int | None = None
    stats: CacheStats = field(default_factory=CacheStats)
    _estimate: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # -- keys and paths -------------------------------------------------------------------------------------
    @staticmethod
    def key(video: Path, num_frames: int, size: tuple[int, int] | None) -> str:
        """Raises OSError when the video cannot be stat'ed (then there is nothing to cache either)."""
        resolved = Path(video).resolve()
        st = resolved.stat()
        ident = {
            "v": FORMAT_VERSION,
            "path": str(resolved),
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "num_frames": int(num_frames),
            "size": list(size) if size is not None else None,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def path_for(self, key: str) -> Path:
        # Two-character fan-out keeps any one folder small enough to list quickly on big datasets.
        return self.root / key[:2] / f"{key}{SUFFIX}"

    # -- read / write ---------------------------------------------------------------------------------------
    def get(self, key: str, num_frames: int, size: tuple[int, int] | None) -> np.ndarray | None:
        path = self.path_for(key)
        try:
            frames = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            # Short or garbled file: a miss; drop it so the decode that follows can store a good one.
            self.stats.corrupt += 1
            _unlink(path)
            return None
        if not _valid(frames, num_frames, size):
            self.stats.corrupt += 1
            _unlink(path)
            return None
        try:
            os.utime(path)  # LRU: eviction goes by mtime, and atime is often not kept (noatime/relatime)
        except OSError:
            pass  # a read-only cache still serves hits
        return frames

    def put(self, key: str, frames: np.ndarray) -> bool:
        """Store an entry atomically; False (and nothing left behind) when the cache folder is not writable."""
        path = self.path_for(key)
        pixels = np.ascontiguousarray(frames, dtype=np.uint8)
        try:
            write_atomic(path, lambda fh: np.save(fh, pixels, allow_pickle=False))
        except OSError:
            return False
        self.stats.writes += 1
        self._account(path)
        return True

    def frames(self, video: Path, num_frames: int, size: tuple[int, int] | None = None,
               info: VideoInfo | None = None) -> tuple[np.ndarray, Outcome]:
        """The clip's frames (as `sample_frames` returns them) and whether they came from the cache.

        Raises VideoError exactly like `sample_frames`; an undecodable clip is never cached.
        """
        try:
            key = self.key(video, num_frames, size)
        except OSError:
            key = None  # missing file: let sample_frames word the error
        if key is not None:
            cached = self.get(key, num_frames, size)
            if cached is not None:
                self.stats.hits += 1
                return cached, "hit"
        frames = sample_frames(video, num_frames, size=size, info=info)
        self.stats.misses += 1
        if key is not None and self.put(key, frames):
            return frames, "written"
        return frames, "decoded"

    # -- size cap -------------------------------------------------------------------------------------------
    def _account(self, path: Path) -> None:
        if self.max_bytes is None:
            return
        try:
            added = path.stat().st_size
        except OSError:
            return
        if self._estimate is None:
            self._estimate = self.total_bytes()
        else:
            self._estimate += added
        if self._estimate > self.max_bytes:
            self.evict()

    def entries(self) -> Iterator[tuple[Path, int, float]]:
        """(path, bytes, mtime) of every entry; stale temp files of dead writers are deleted on the way."""
        if not self.root.is_dir():
            return
        now = time.time()
        for sub in os.scandir(self.root):
            if not sub.is_dir():
                continue
            try:
                listing = list(os.scandir(sub.path))
            except OSError:
                continue  # removed by someone clearing the cache meanwhile
            for entry in listing:
                try:
                    st = entry.stat()
                except OSError:
                    continue  # evicted or renamed by another process meanwhile
                if TMP_MARK in entry.name:
                    if now - st.st_mtime > STALE_TMP_SECONDS:
                        _unlink(Path(entry.path))
                    continue
                if entry.name.endswith(SUFFIX):
                    yield Path(entry.path), st.st_size, st.st_mtime

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        """Delete least recently used entries until the cache is at most 90% of its cap; returns bytes freed."""
        if self.max_bytes is None:
            return 0
        listed = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in listed)
        target = int(self.max_bytes * EVICT_TO)
        freed = 0
        for path, size, _ in listed:
            if total - freed <= target:
                break
            if _unlink(path):
                freed += size
                self.stats.evicted += 1
        self._estimate = total - freed
        return freed


def _valid(frames: np.ndarray, num_frames: int, size: tuple[int, int] | None) -> bool:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[1] != 3:
        return False
    return size is None or tuple(frames.shape[2:]) == tuple(size)


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


# One cache object per (folder, cap) and process, so the running size estimate survives across calls.
_CACHES: dict[tuple[str, int | None], FrameCache] = {}


def cache_for(root: str | Path, max_gb: float | None) -> FrameCache:
    max_bytes = int(max_gb * 1024**3) if max_gb is not None else None
    key = (str(Path(root).resolve()), max_bytes)
    if key not in _CACHES:
        _CACHES[key] = FrameCache(Path(key[0]), max_bytes)
    return _CACHES[key]


def plan_clip(video: Path, data_cfg, info: VideoInfo | None = None) -> tuple[VideoInfo, int, tuple[int, int]]:
    """The clip's facts (``info``, probed when not given) and what `geometry.clip_plan` decodes of it:
    (info, frames, (height, width)). Raises VideoError for a clip that cannot be probed."""
    info = info or probe_cached(video, data_cfg.min_decodable_fraction)
    return (info, *clip_plan(info, data_cfg))


def _clip_frames(video: Path, data_cfg, info: VideoInfo | None) -> tuple[np.ndarray, Outcome]:
    info, num_frames, size = plan_clip(video, data_cfg, info)
    if not data_cfg.frame_cache:
        return sample_frames(video, num_frames, size=size, info=info), "decoded"
    return cache_for(data_cfg.frame_cache_dir, data_cfg.frame_cache_max_gb).frames(video, num_frames, size, info)


def load_clip(video: Path, data_cfg, info: VideoInfo | None = None) -> np.ndarray:
    """The frames training and evaluation feed the processor, as `plan_clip` says, from the frame cache when
    ``data.frame_cache`` is on. Raises VideoError like `sample_frames`."""
    return _clip_frames(video, data_cfg, info)[0]


def _warm_one(video: Path, data_cfg) -> tuple[str, str | None]:
    try:
        return _clip_frames(video, data_cfg, None)[1], None
    except VideoError as exc:
        return "failed", str(exc).split(": ", 1)[-1] if str(exc).startswith(str(video)) else str(exc)


def warm(videos: list[Path], data_cfg, workers: int = 1, on_done=None) -> tuple[dict[str, int], dict[Path, str]]:
    """Fill the cache for `videos` (each once): counts of "hit", "written", "decoded" (not storable), "failed",
    and the reason each failed clip failed (path -> one line).

    ``workers`` > 1 decodes in that many processes; ``on_done(outcome)`` is called as each clip finishes.
    """
    counts = {"hit": 0, "written": 0, "decoded": 0, "failed": 0}
    failures: dict[Path, str] = {}
    unique = list(dict.fromkeys(Path(v) for v in videos))

    def done(video: Path, result: tuple[str, str | None]) -> None:
        outcome, reason = result
        counts[outcome] += 1
        if reason is not None:
            failures[video] = reason
        if on_done:
            on_done(outcome)

    if workers <= 1 or len(unique) < 2:
        for video in unique:
            done(video, _warm_one(video, data_cfg))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: the caller may be drawing a progress bar from a thread, and a forked child could
        # inherit one of its locks held.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(unique)), mp_context=ctx) as pool:
            futures = {pool.submit(_warm_one, v, data_cfg): v for v in unique}
            for fut in as_completed(futures):
                done(futures[fut], fut.result())
    if data_cfg.frame_cache_max_gb is not None:
        # Worker processes kept their own size estimates; one scan here enforces the cap over all they wrote.
        cache = cache_for(data_cfg.frame_cache_dir, data_cfg.frame_cache_max_gb)
        if cache.total_bytes() > (cache.max_bytes or 0):
            cache.evict()
    return counts, failures
