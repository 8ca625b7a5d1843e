"""Decoded-frame cache: hits equal a fresh decode, a changed clip misses, racing processes leave one valid file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from app.config import load_config
from app.data.frame_cache import TMP_MARK, FrameCache, load_clip
from app.data.synthetic import SampleSummary
from app.data.video import VideoError, sample_frames

REPO = Path(__file__).resolve().parents[2]
SIZE = (56, 56)


@pytest.fixture
def clip(sample_set: SampleSummary, tmp_path: Path) -> Path:
    """A private copy: tests below rewrite and touch it."""
    dst = tmp_path / "clip.mp4"
    shutil.copy2(sample_set.video_folder / "clip_0000.mp4", dst)
    return dst


def _entries(root: Path) -> list[Path]:
    # Frame entries only: the same folder's probes/ keeps each clip's probe for later runs.
    return sorted(p for p in root.rglob("*.npy") if p.is_file())


def test_hit_returns_the_frames_of_a_fresh_decode(clip: Path, tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    first, how = cache.frames(clip, 8, SIZE)
    assert how == "written"
    again, how = FrameCache(tmp_path / "cache").frames(clip, 8, SIZE)  # a later run: a new object
    assert how == "hit"
    fresh = sample_frames(clip, 8, size=SIZE)
    assert again.dtype == np.uint8 and again.shape == (8, 3, *SIZE)
    np.testing.assert_array_equal(again, fresh)
    np.testing.assert_array_equal(first, fresh)


def test_settings_are_part_of_the_key(clip: Path, tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    cache.frames(clip, 8, SIZE)
    assert cache.frames(clip, 4, SIZE)[1] == "written"
    assert cache.frames(clip, 8, (28, 56))[1] == "written"
    assert len(_entries(tmp_path / "cache")) == 3


def test_changed_video_invalidates_its_entry(clip: Path, sample_set: SampleSummary, tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    old, _ = cache.frames(clip, 8, SIZE)
    # Another clip's content under the same name: size and mtime change, the old pixels must not come back.
    shutil.copyfile(sample_set.video_folder / "clip_0003.mp4", clip)
    new, how = cache.frames(clip, 8, SIZE)
    assert how == "written"
    np.testing.assert_array_equal(new, sample_frames(clip, 8, size=SIZE))
    assert not np.array_equal(new, old)
    # Same bytes, new mtime (e.g. re-exported): also a miss, since the cache cannot know the pixels are the same.
    later = time.time_ns() + 5_000_000_000
    os.utime(clip, ns=(later, later))
    assert cache.frames(clip, 8, SIZE)[1] == "written"


def test_corrupt_entry_is_a_miss_and_is_rewritten(clip: Path, tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    cache.frames(clip, 8, SIZE)
    (entry,) = _entries(tmp_path / "cache")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # as after a crash mid-copy
    frames, how = cache.frames(clip, 8, SIZE)
    assert how == "written" and cache.stats.corrupt == 1
    np.testing.assert_array_equal(frames, sample_frames(clip, 8, size=SIZE))
    assert cache.frames(clip, 8, SIZE)[1] == "hit"


def test_undecodable_clip_raises_and_is_not_cached(bad_files: dict[str, Path], tmp_path: Path) -> None:
    cache = FrameCache(tmp_path / "cache")
    for name in ("truncated", "text", "zero_byte"):
        with pytest.raises(VideoError):
            cache.frames(bad_files[name], 8, SIZE)
    with pytest.raises(VideoError, match="file not found"):
        cache.frames(tmp_path / "missing.mp4", 8, SIZE)
    assert _entries(tmp_path / "cache") == []


def test_size_cap_evicts_least_recently_used(sample_set: SampleSummary, tmp_path: Path) -> None:
    clips = sorted(sample_set.video_folder.glob("clip_*.mp4"))[:4]
    entry_bytes = 8 * 3 * 56 * 56 + 128  # pixels + the .npy header
    cache = FrameCache(tmp_path / "cache", max_bytes=int(3.5 * entry_bytes))
    for i, c in enumerate(clips[:3]):
        cache.frames(c, 8, SIZE)
        past = time.time() - 100 + i  # distinct, ordered mtimes whatever the filesystem's resolution
        os.utime(cache.path_for(cache.key(c, 8, SIZE)), (past, past))
    assert cache.frames(clips[0], 8, SIZE)[1] == "hit"  # clip 0 is now the most recently used
    cache.frames(clips[3], 8, SIZE)  # over the cap: drops the oldest (clip 1) down to 90% of it
    assert cache.total_bytes() <= cache.max_bytes
    assert cache.stats.evicted >= 1
    assert cache.frames(clips[0], 8, SIZE)[1] == "hit"
    assert cache.frames(clips[1], 8, SIZE)[1] == "written"


def test_load_clip_follows_the_config_switch(clip: Path, tmp_path: Path) -> None:
    tiny = REPO / "configs" / "tiny_cpu.yaml"
    on = load_config(tiny, [f"data.frame_cache_dir={tmp_path / 'on'}"]).data
    off = load_config(tiny, [f"data.frame_cache_dir={tmp_path / 'off'}", "data.frame_cache=false"]).data
    a, b = load_clip(clip, on), load_clip(clip, off)
    np.testing.assert_array_equal(a, b)
    assert len(_entries(tmp_path / "on")) == 1
    assert not (tmp_path / "off").exists()
    # Where the cache lives or whether it is used does not change what a run computes.
    assert load_config(tiny, ["data.frame_cache=false"]).config_hash() == load_config(tiny).config_hash()


RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from app.data.frame_cache import FrameCache
    from app.data.video import sample_frames

    root, clip, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    cache = FrameCache(root)
    frames = sample_frames(clip, 8, size=(56, 56))
    key = cache.key(clip, 8, (56, 56))
    ready.touch()
    while not go.exists():  # both start writing at the same moment
        time.sleep(0.001)
    for _ in range(40):  # many overlapping temp-write + rename rounds on the one entry
        assert cache.put(key, frames)
    """
)


def test_two_processes_filling_one_entry_leave_one_valid_file(clip: Path, tmp_path: Path) -> None:
    root, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(root), str(clip), str(go), str(tmp_path / f"ready{i}")],
                         env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    files = _entries(root)
    assert len(files) == 1, files
    assert not any(TMP_MARK in f.name for f in files)
    frames, how = FrameCache(root).frames(clip, 8, SIZE)
    assert how == "hit"
    np.testing.assert_array_equal(frames, sample_frames(clip, 8, size=SIZE))


def test_validate_warm_cache_fills_then_hits(sample_dir: Path, tmp_path: Path) -> None:
    from cli_helpers import TINY, ego_here

    sets = [f"data.data_path={sample_dir / 'Ego4D.json'}", f"data.video_folder={sample_dir / 'videos'}",
            f"data.eval_ids_file={sample_dir / 'eval_ids.txt'}", f"data.frame_cache_dir={tmp_path / 'frames'}"]
    cmd = ["data", "validate", "--config", TINY, "--warm-cache", *[a for s in sets for a in ("--set", s)]]
    first = ego_here(*cmd)
    assert first.returncode == 0, first.stderr
    assert "written 12, already there 0, failed 0" in first.stdout
    assert len(_entries(tmp_path / "frames")) == 12
    assert len(list((tmp_path / "frames" / "probes").rglob("*.json"))) == 12  # the next run skips probing
    second = ego_here(*cmd)
    assert "written 0, already there 12, failed 0" in second.stdout
    off = ego_here(*cmd, "--set", "data.frame_cache=false")
    assert off.returncode == 1 and "frame cache is off" in off.stderr
