"""Real-world footage: codecs, containers, bit depths, aspect ratios, VFR, rotation, damaged files.

Every clip is encoded here with PyAV (tests/clip_factory.py); each frame carries its index, so the tests check
*which* frames came back, not just how many.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import TINY, ego
from clip_factory import encode, read_index, red_corner

from app.config import DataConfig
from app.data import ego4d
from app.data.frame_cache import load_clip
from app.data.geometry import clip_plan, smart_resize
from app.data.video import PYAV, VideoError, indices_at_times, probe_video, sample_frames, segment_centres

# name -> encode() arguments; 30 frames at 30 fps, 160x96 unless said otherwise.
VARIANTS: dict[str, dict] = {
    "h264.mp4": {},
    "hevc_hev1.mp4": {"codec": "libx265"},
    "hevc_hvc1.mp4": {"codec": "libx265", "codec_tag": "hvc1"},
    "hevc_10bit.mp4": {"codec": "libx265", "pix_fmt": "yuv420p10le"},
    "h264_10bit.mp4": {"pix_fmt": "yuv420p10le", "options": {"profile": "high10"}},
    "vp9.webm": {"codec": "libvpx-vp9"},
    "av1.mp4": {"codec": "libsvtav1"},
    "av1_10bit.mp4": {"codec": "libsvtav1", "pix_fmt": "yuv420p10le"},
    "av1.webm": {"codec": "libsvtav1"},
    "mpeg4.avi": {"codec": "mpeg4", "options": {"qscale": "2"}},
    "mjpeg.mov": {"codec": "mjpeg", "pix_fmt": "yuvj420p"},
    "h264.ts": {"container_format": "mpegts"},
    "h264.mkv": {},
    "fragmented.mp4": {"container_options": {"movflags": "frag_keyframe+empty_moov"}},
    "open_gop_bframes.mp4": {"options": {"bf": "3", "open_gop": "1", "g": "12", "preset": "medium"}},
}
# decord's bundled FFmpeg cannot read these; PyAV does.
NEEDS_PYAV = {"av1.mp4", "av1_10bit.mp4", "av1.webm", "h264.ts"}
CFR_EXPECTED = [1, 5, 9, 13, 16, 20, 24, 28]  # centres of 8 equal segments of 1 s at 30 fps
# 60 frames at 60 fps, then 30 at 5 fps: 6.8 s, most frames in the first second.
VFR_TIMES = [i / 60 for i in range(60)] + [1.0 + i / 5 for i in range(30)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("real_clips")
    for name, kwargs in VARIANTS.items():
        encode(d / name, **kwargs)
    encode(d / "wide.mp4", width=320, height=180)
    encode(d / "portrait.mp4", width=90, height=160)
    encode(d / "square.mp4", width=112, height=112)
    encode(d / "rot90.mp4", rotation=90)
    encode(d / "rot270.mp4", rotation=-90)
    encode(d / "vfr.mp4", frames=90, width=160, height=160, times=VFR_TIMES, fps=60)
    encode(d / "one_frame.mp4", frames=1)
    encode(d / "three_frames.mp4", frames=3)
    # Index (moov) at the front, as web downloads have it: a cut file still opens and declares 20 s.
    encode(d / "long20s.mp4", frames=600, width=320, height=192, container_options={"movflags": "faststart"})
    data = (d / "long20s.mp4").read_bytes()
    for share in (0.3, 0.6):
        (d / f"cut{int(share * 100)}.mp4").write_bytes(data[: int(len(data) * share)])
    (d / "notes.mp4").write_text("a shopping list, not a video\n")
    return d


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_codec_and_container_gives_the_frames_at_the_time_centres(clips: Path, name: str) -> None:
    info = probe_video(clips / name, 0.9)
    assert info.decoder == (PYAV if name in NEEDS_PYAV else "decord")
    assert (info.width, info.height, info.num_frames) == (160, 96, 30)
    frames = sample_frames(clips / name, 8, info=info)
    got = [read_index(f) for f in frames]
    # mpeg4-in-avi reports its last frame's end 1 frame early, which moves a centre by at most one frame.
    assert max(abs(g - e) for g, e in zip(got, CFR_EXPECTED, strict=True)) <= (1 if name == "mpeg4.avi" else 0), got
    assert red_corner(frames[0]) == "bottom-left"


@pytest.mark.parametrize("name", ["h264.mp4", "hevc_10bit.mp4", "vp9.webm", "vfr.mp4", "rot90.mp4", "wide.mp4"])
def test_decord_and_pyav_return_the_same_frames(clips: Path, name: str) -> None:
    info = probe_video(clips / name)
    forced = dataclasses.replace(info, decoder=PYAV)
    native = sample_frames(clips / name, 8, info=info), sample_frames(clips / name, 8, info=forced)
    assert native[0].shape == native[1].shape
    # Same frames; pixels equal but for 10-bit edges, where FFmpeg 4.1 and 7 convert colours a little apart.
    assert np.abs(native[0].astype(int) - native[1].astype(int)).mean() < 0.5
    size = smart_resize(info.height, info.width, 28, 784, 3136)
    resized = sample_frames(clips / name, 8, size, info=info), sample_frames(clips / name, 8, size, info=forced)
    assert resized[0].shape == resized[1].shape == (8, 3, *size)
    assert np.abs(resized[0].astype(int) - resized[1].astype(int)).mean() < 1.5  # two swscale builds


@pytest.mark.parametrize("decoder", ["decord", PYAV])
def test_variable_frame_rate_clip_is_sampled_evenly_in_time(clips: Path, decoder: str) -> None:
    info = dataclasses.replace(probe_video(clips / "vfr.mp4"), decoder=decoder)
    assert info.duration == pytest.approx(6.8, abs=0.05)
    got = [read_index(f) for f in sample_frames(clips / "vfr.mp4", 8, info=info)]
    expected = indices_at_times(np.array(VFR_TIMES), segment_centres(0.0, info.duration, 8))
    assert got == expected
    # Uniform in frame index put 6 of 8 samples into the first 1.2 s; in time, one sample per 0.85 s.
    assert sum(VFR_TIMES[i] < 1.2 for i in got) <= 2
    shown = [VFR_TIMES[i] for i in got]
    assert max(np.diff(shown)) < 1.2


def test_fps_sampling_follows_duration_within_bounds(clips: Path) -> None:
    info = probe_video(clips / "vfr.mp4")
    assert clip_plan(info, DataConfig(fps=2.0, max_frames=32))[0] == 14
    assert clip_plan(info, DataConfig(fps=2.0, max_frames=8))[0] == 8
    assert clip_plan(probe_video(clips / "h264.mp4"), DataConfig(fps=1.0, min_frames=4))[0] == 4
    assert clip_plan(info, DataConfig(num_frames=6))[0] == 6  # fps unset: num_frames


@pytest.mark.parametrize("name, stored", [("wide.mp4", (180, 320)), ("portrait.mp4", (160, 90)),
                                          ("square.mp4", (112, 112))])
def test_frames_keep_their_aspect_ratio(clips: Path, tmp_path: Path, name: str, stored: tuple[int, int]) -> None:
    cfg = DataConfig(num_frames=4, min_pixels=784, max_pixels=12544, frame_cache_dir=str(tmp_path / "cache"))
    frames = load_clip(clips / name, cfg)
    height, width = frames.shape[2:]
    assert (height, width) == smart_resize(*stored, 28, 784, 12544)
    assert height % 28 == 0 and width % 28 == 0 and height * width <= 12544
    assert abs(np.log((width / height) / (stored[1] / stored[0]))) < 0.25  # never squashed to a square
    assert red_corner(frames[0]) == "bottom-left"
    # The frame cache keys on geometry: a new pixel budget is a new entry, not the old frames.
    smaller = load_clip(clips / name, cfg.model_copy(update={"max_pixels": 3136}))
    assert smaller.shape[2] * smaller.shape[3] < height * width
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2


@pytest.mark.parametrize("name, corner", [("rot90.mp4", "bottom-right"), ("rot270.mp4", "top-left")])
def test_rotated_clips_are_turned_as_players_show_them(clips: Path, name: str, corner: str) -> None:
    info = probe_video(clips / name)
    assert (info.width, info.height) == (96, 160)  # upright: portrait
    for decoder in ("decord", PYAV):
        frames = sample_frames(clips / name, 8, info=dataclasses.replace(info, decoder=decoder))
        assert frames.shape[2:] == (160, 96)
        # The display matrix turns the stored picture counter-clockwise by its angle, as FFmpeg players do.
        assert red_corner(frames[0]) == corner
        unturned = np.rot90(frames.transpose(0, 2, 3, 1), k=-info.rotation // 90, axes=(1, 2)).transpose(0, 3, 1, 2)
        assert [read_index(f) for f in unturned] == CFR_EXPECTED


@pytest.mark.parametrize("cut", ["cut30.mp4", "cut60.mp4"])
def test_truncated_clip_is_refused_never_shortened(clips: Path, cut: str) -> None:
    assert probe_video(clips / "long20s.mp4", 0.9).duration == pytest.approx(20.0, abs=0.1)
    with pytest.raises(VideoError, match=r"truncated: \d+\.\d of 20\.0 s decodable") as err:
        probe_video(clips / cut, 0.9)
    assert cut in str(err.value) and "\n" not in str(err.value)
    # Through the data loader it is a named skip of its own kind.
    data = clips / f"{cut}.json"
    data.write_text(json.dumps([{"id": "cut", "video": cut, "conversations": [
        {"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "red"}]}]))
    cfg = DataConfig(data_path=str(data), video_folder=str(clips), eval_fraction=0.0)
    report = ego4d.load_records(cfg, probe=lambda p: probe_video(p, cfg.min_decodable_fraction))
    assert report.skipped == {ego4d.TRUNCATED: 1}
    assert "of 20.0 s decodable" in report.skipped_records[0].detail


def test_a_strip_too_thin_for_the_patch_grid_is_a_one_line_error(tmp_path: Path) -> None:
    encode(tmp_path / "strip.mp4", frames=4, width=1000, height=4)
    with pytest.raises(VideoError, match=r"strip\.mp4: unsupported frame size 1000x4 \(aspect ratio over 200\)"):
        probe_video(tmp_path / "strip.mp4")


def test_short_clips_repeat_frames_in_time_order(clips: Path) -> None:
    assert [read_index(f) for f in sample_frames(clips / "one_frame.mp4", 8)] == [0] * 8
    assert [read_index(f) for f in sample_frames(clips / "three_frames.mp4", 8)] == [0, 0, 0, 1, 1, 2, 2, 2]


def _validate(data: list[dict], folder: Path, *sets: str, warm: bool = False) -> subprocess.CompletedProcess:
    """`data validate` in a subprocess: what FFmpeg and decord print natively goes to the process's own stderr,
    which only a subprocess captures."""
    path = folder / "mixed.json"
    path.write_text(json.dumps(data))
    args = ["data", "validate", "--config", TINY,
            "--set", f"data.data_path={path}", "--set", f"data.video_folder={folder}",
            "--set", "data.eval_ids_file=null", "--set", "data.eval_fraction=0.0",
            "--set", f"data.frame_cache_dir={folder / 'frames'}", *[a for s in sets for a in ("--set", s)]]
    args += ["--warm-cache"] if warm else []
    return ego(*args, env={"COLUMNS": "250"}, timeout=300)


def _qa(rid: str, video: str) -> dict:
    return {"id": rid, "video": video, "conversations": [
        {"from": "human", "value": "<video>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}


NATIVE_NOISE = (".cc:", "/github/workspace", "moov atom", "[mov,", "[h264 @", "Svt[", "x265 [")


def test_validate_counts_pyav_and_truncation_and_prints_no_native_lines(clips: Path) -> None:
    names = ["h264.mp4", "av1.mp4", "av1.webm", "h264.ts", "cut30.mp4", "notes.mp4", "wide.mp4"]
    res = _validate([_qa(n.replace(".", "_"), n) for n in names], clips)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert not [noise for noise in NATIVE_NOISE if noise in out], out
    rows = [line.split("│") for line in out.splitlines() if line.count("│") >= 3]
    lines = {cells[1].strip(): cells[2].strip() for cells in rows}
    assert lines["warning: " + ego4d.DECODED_WITH_PYAV] == "3"
    assert lines["skipped: " + ego4d.TRUNCATED] == "1"
    assert lines["skipped: " + ego4d.UNDECODABLE] == "1"
    assert "usable: 5 of 7 records" in out


def test_warm_cache_names_each_failure_and_updates_the_usable_count(clips: Path) -> None:
    names = ["h264.mp4", "cut60.mp4", "notes.mp4", "av1.mp4"]
    # Without the up-front check, the damage is found while warming: each failure named, the count corrected.
    res = _validate([_qa(n.replace(".", "_"), n) for n in names], clips, "data.check_decodable=false",
                    "training.dataloader_workers=1", warm=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-2000:]
    assert not [noise for noise in NATIVE_NOISE if noise in out], out
    assert "failed 2" in out
    assert "skipped cut60_mp4" in out and "truncated: " in out and "skipped notes_mp4" in out
    assert "usable after warming the cache: 2 of 4 records" in out
