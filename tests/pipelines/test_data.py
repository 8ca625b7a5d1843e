"""`ego4d-ft data sample` and `data validate` (app/pipelines/data.py): what of the data is usable, and why not.

In this process (`ego_here`), except `test_sample_then_validate_reports_every_clip_usable`: both subcommands as
users run them (the installed script's end-to-end `data`; neither imports torch, so each costs ~2 s)."""

from __future__ import annotations

import json

from cli_helpers import TINY, ego, ego_here, tiny_sets


def test_validate_counts_usable_and_skips(sample_dir, model_cache, tmp_path):
    sets = tiny_sets(sample_dir, model_cache, tmp_path / "out")
    res = ego_here("data", "validate", "--config", TINY, *sets)
    assert res.returncode == 0, res.stderr
    assert "usable: 12 of 12 records (train 10, held-out 2); skipped: 0" in res.stdout

    # One broken record among good ones: reported with its reason, exit stays 0.
    records = json.loads((sample_dir / "Ego4D.json").read_text())
    records.append({"id": "evil", "video": "../../etc/passwd", "conversations": records[0]["conversations"]})
    bad = tmp_path / "with_bad.json"
    bad.write_text(json.dumps(records))
    res = ego_here("data", "validate", "--config", TINY, *sets, "--set", f"data.data_path={bad}")
    assert res.returncode == 0
    assert "usable: 12 of 13 records" in res.stdout and "skipped: 1" in res.stdout
    assert "path escapes its folder" in res.stdout and "evil" in res.stdout


def test_validate_exits_1_when_nothing_usable(sample_dir, model_cache, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    res = ego_here("data", "validate", "--config", TINY, *tiny_sets(sample_dir, model_cache, tmp_path / "out"),
                   "--set", f"data.data_path={empty}")
    assert res.returncode == 1
    assert "nothing usable" in res.stdout


def test_sample_then_validate_reports_every_clip_usable(tmp_path):
    from app.data.video import probe_video

    out = tmp_path / "s"
    res = ego("data", "sample", "--out", out, "--clips", "12")
    assert res.returncode == 0, res.stderr
    clips = sorted((out / "videos").glob("*.mp4"))
    assert len(clips) == 12
    for clip in clips:
        info = probe_video(clip)
        assert info.num_frames == 16 and info.has_audio
    # The default config, pointed at the new set (and a frame cache outside the repository).
    res = ego("data", "validate", "--set", f"data.data_path={out / 'Ego4D.json'}",
              "--set", f"data.video_folder={out / 'videos'}", "--set", f"data.eval_ids_file={out / 'eval_ids.txt'}",
              "--set", f"data.frame_cache_dir={tmp_path / 'frames'}")
    assert res.returncode == 0, res.stderr
    assert "usable: 12 of 12 records" in res.stdout
