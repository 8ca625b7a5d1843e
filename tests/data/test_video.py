"""Frame sampling on real generated H.264 clips and on broken files."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
from decord import VideoReader, cpu

from app.data.synthetic import COLORS, SCENE_LIGHT, SampleSummary, plan_clips, render_frames, write_clip
from app.data.video import VideoError, frame_count, probe_video, sample_frames, uniform_indices


def test_uniform_indices_are_segment_centres() -> None:
    assert uniform_indices(16, 4) == [2, 6, 10, 14]
    assert uniform_indices(10, 1) == [5]
    assert uniform_indices(7, 7) == list(range(7))


def test_uniform_indices_repeat_when_clip_is_short() -> None:
    idx = uniform_indices(3, 8)
    assert len(idx) == 8 and idx == sorted(idx) and set(idx) == {0, 1, 2}


@pytest.mark.parametrize("total,n", [(0, 4), (4, 0)])
def test_uniform_indices_reject_empty(total: int, n: int) -> None:
    with pytest.raises(ValueError):
        uniform_indices(total, n)


@pytest.mark.parametrize("n", [1, 4, 16, 20])
def test_sample_frames_shape_and_dtype(sample_set: SampleSummary, n: int) -> None:
    frames = sample_frames(sample_set.video_folder / "clip_0000.mp4", n)
    assert frames.dtype == np.uint8
    assert frames.shape == (n, 3, sample_set.size, sample_set.size)
    assert frames.std() > 5  # real picture content, not a blank buffer


def test_sample_frames_resizes(sample_set: SampleSummary) -> None:
    frames = sample_frames(sample_set.video_folder / "clip_0001.mp4", 6, size=(56, 56))
    assert frames.shape == (6, 3, 56, 56) and frames.dtype == np.uint8
    assert sample_frames(sample_set.video_folder / "clip_0001.mp4", 2, size=(48, 64)).shape == (2, 3, 48, 64)


def test_sampling_a_few_frames_does_not_decode_the_whole_clip(tmp_path: Path) -> None:
    # 2400 frames with a keyframe every 8: sampling seeks near 4 indices, so it costs a few GOPs while
    # decoding everything costs all 2400 frames (about 10x more here). Shared CPUs make timings noisy (a 4x
    # margin failed once with 3 test workers on 2 cores), hence best of 5 and a 2x margin.
    spec = plan_clips(4, 0, 64)[0]
    path = tmp_path / "long.mp4"
    total = 2400
    write_clip(path, np.concatenate([render_frames(spec, 16, 64, 0)] * (total // 16)), 8, None)
    assert frame_count(path) == total

    def best_of_5(fn) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def decode_all() -> None:
        VideoReader(str(path), ctx=cpu(0), num_threads=1).get_batch(list(range(total))).asnumpy()

    info = probe_video(path)  # probed once, as the data report does before training reads clips
    sampled = best_of_5(lambda: sample_frames(path, 4, info=info))
    full = best_of_5(decode_all)
    assert sampled * 2 < full, f"sampling 4 frames took {sampled:.4f}s, decoding all {full:.4f}s"


def _mask(frame_chw: np.ndarray) -> np.ndarray:
    # The background is grey under a gentle lighting gradient (channel spread <= 2 x SCENE_LIGHT) and the object
    # saturated (spread >= 160), so channel spread separates them.
    f = frame_chw.astype(np.int16)
    return (f.max(axis=0) - f.min(axis=0)) > 2 * SCENE_LIGHT + 40


def _colour(frames: np.ndarray) -> str:
    pixels = np.concatenate([f.reshape(3, -1)[:, _mask(f).ravel()] for f in frames], axis=1)
    mean = pixels.mean(axis=1)
    return min(COLORS, key=lambda c: float(np.sum((mean - np.array(COLORS[c])) ** 2)))


def _direction(frames: np.ndarray) -> str:
    def centroid(f: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(_mask(f))
        return np.array([xs.mean(), ys.mean()])

    dx, dy = centroid(frames[-1]) - centroid(frames[0])
    moved = max(abs(dx), abs(dy))
    assert moved > 0.3 * frames.shape[-1], f"object moved only {moved:.1f} px"
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _shape(frame: np.ndarray) -> str:
    mask = _mask(frame)
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    rows = box.sum(axis=1)
    quarter = max(len(rows) // 4, 1)
    corners = np.mean([box[:3, :3].mean(), box[:3, -3:].mean(), box[-3:, :3].mean(), box[-3:, -3:].mean()])
    # Measured at 56x56 after H.264: a triangle's top quarter is under 1/3 as wide as its bottom (others
    # >= 0.75); only a square fills its bounding-box corners (>= 0.6, circle <= 0.15); a circle fills
    # >= 0.7 of its box, a cross <= 0.65.
    if rows[:quarter].mean() < 0.5 * rows[-quarter:].mean():
        return "triangle"
    if corners > 0.4:
        return "square"
    return "circle" if box.mean() > 0.68 else "cross"


def test_facts_are_recoverable_from_sampled_frames(sample_set: SampleSummary) -> None:
    specs = plan_clips(sample_set.num_records, sample_set.seed, sample_set.size)
    records = {r["id"]: r for r in json.loads(sample_set.data_path.read_text())}
    for spec in specs:
        frames = sample_frames(sample_set.video_folder / f"{spec.clip_id}.mp4", 8, size=(56, 56))
        masks = [_mask(f) for f in frames]
        assert all(m.sum() > 20 for m in masks), f"{spec.clip_id}: object missing in a sampled frame"
        # Fully visible: the object never touches the border of any frame.
        assert not any(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in masks)
        assert _colour(frames) == spec.color, spec.clip_id
        assert _direction(frames) == spec.direction, spec.clip_id
        assert [_shape(f) for f in frames] == [spec.shape] * len(frames), spec.clip_id
        for turn in records[spec.clip_id]["conversations"]:
            if turn["from"] == "gpt":
                assert turn["value"] == getattr(spec, turn["type"])


def test_every_generated_clip_opens_with_expected_frames_and_audio(sample_set: SampleSummary) -> None:
    clips = sorted(sample_set.video_folder.glob("*.mp4"))
    assert len(clips) == sample_set.num_records
    n, size = sample_set.frames, sample_set.size
    for path in clips:
        assert len(VideoReader(str(path), ctx=cpu(0), num_threads=1)) == n
        info = probe_video(path)
        assert (info.num_frames, info.width, info.height) == (n, size, size)
        assert info.fps == pytest.approx(sample_set.fps)
        assert info.has_audio, path.name


def test_probe_reports_missing_audio(bad_files: dict[str, Path]) -> None:
    assert probe_video(bad_files["no_audio"]).has_audio is False
    assert frame_count(bad_files["no_audio"]) == 8


@pytest.mark.parametrize("name", ["zero_byte", "truncated", "text", "audio_only"])
def test_bad_files_raise_one_line_video_error(bad_files: dict[str, Path], name: str) -> None:
    path = bad_files[name]
    for call in (lambda: sample_frames(path, 4), lambda: probe_video(path), lambda: frame_count(path)):
        with pytest.raises(VideoError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert path.name in message
    if name == "audio_only":
        assert "no video stream" in message


def test_missing_file_raises_video_error(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="missing.mp4: file not found"):
        sample_frames(tmp_path / "missing.mp4", 4)


def test_probes_are_kept_on_disk_for_later_runs(sample_set: SampleSummary, tmp_path: Path) -> None:
    import shutil

    from app.data import video

    clip = tmp_path / "clip.mp4"
    shutil.copy(sample_set.video_folder / "clip_0000.mp4", clip)
    cache = tmp_path / "probes"
    first = video.probe_cached(clip, 0.9, cache)
    assert len(list(cache.rglob("*.json"))) == 1
    video._PROBED.clear()  # a later run: nothing in memory, the stored probe answers
    stored = next(cache.rglob("*.json"))
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "codec": "from-disk"}))
    assert video.probe_cached(clip, 0.9, cache) == dataclasses.replace(first, codec="from-disk")

    video._PROBED.clear()  # the file changed: its old probe does not apply
    clip.write_bytes(clip.read_bytes()[:300])
    with pytest.raises(VideoError):
        video.probe_cached(clip, 0.9, cache)
    assert len(list(cache.rglob("*.json"))) == 1  # a failure is not stored: a repaired file is probed again
