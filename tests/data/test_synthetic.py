"""The synthetic sample set: balance, splits, record format, files on disk, determinism."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import pytest

from app.data.synthetic import QUESTION_TYPES, VALUES, SampleSummary, make_sample_set, plan_clips

MAX_SHARE = 0.25 + 0.05


def _answers(records: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for record in records:
        for turn in record["conversations"]:
            if turn["from"] == "gpt":
                out[turn["type"]].append(turn["value"])
    return out


def _assert_balanced(answers: dict[str, list[str]]) -> None:
    for qtype in QUESTION_TYPES:
        counts = collections.Counter(answers[qtype])
        total = len(answers[qtype])
        assert total >= 4, f"{qtype}: only {total} answers"
        assert set(counts) <= set(VALUES[qtype])
        assert max(counts.values()) <= MAX_SHARE * total + 1e-9, f"{qtype}: {dict(counts)}"


@pytest.mark.parametrize("clips", [4, 10, 40, 41])
def test_written_set_is_balanced_and_split(tmp_path: Path, clips: int) -> None:
    summary = make_sample_set(tmp_path, clips=clips, seed=3, frames=4, size=32, fps=4, progress=False)
    records = json.loads(summary.data_path.read_text())
    assert len(records) == summary.num_records == clips
    _assert_balanced(_answers(records))

    eval_ids = summary.eval_ids_path.read_text().split()
    train_ids = summary.train_ids_path.read_text().split()
    assert eval_ids and train_ids and not set(eval_ids) & set(train_ids)
    assert sorted(eval_ids + train_ids) == sorted(r["id"] for r in records)
    assert len(eval_ids) == summary.num_eval == max(1, round(clips * 0.2))
    # Held-out answers spread as evenly as the split size allows: per type, values differ by at most one.
    held_out = _answers([r for r in records if r["id"] in set(eval_ids)])
    for qtype, values in held_out.items():
        counts = collections.Counter(values)
        assert max(counts.values()) - min(counts.get(v, 0) for v in VALUES[qtype]) <= 1, (qtype, counts)


def test_balance_holds_for_every_size() -> None:
    # The plan alone (no files) for many sizes and seeds: the bound must hold for any clips >= 4.
    for clips in range(4, 130):
        specs = plan_clips(clips, seed=clips, size=64)
        answers = {t: [getattr(s, t) for s in specs if t in s.types] for t in QUESTION_TYPES}
        _assert_balanced(answers)


def test_plan_rejects_too_few_clips() -> None:
    with pytest.raises(ValueError):
        plan_clips(3, seed=0, size=64)


def test_records_have_the_ego4d_shape(tmp_path: Path) -> None:
    summary = make_sample_set(tmp_path, clips=40, seed=0, frames=4, size=32, fps=4, progress=False)
    records = json.loads(summary.data_path.read_text())
    transcripts = json.loads(summary.transcripts_path.read_text())
    multi = 0
    for record in records:
        assert {"id", "video", "conversations"} <= set(record)
        assert (summary.video_folder / record["video"]).is_file()
        if "audio" in record:
            assert record["audio"].startswith("audio/") and (summary.out_dir / record["audio"]).is_file()
        turns = record["conversations"]
        assert len(turns) % 2 == 0 and 2 <= len(turns) <= 6
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        humans = [t["value"] for t in turns if t["from"] == "human"]
        assert humans[0].startswith("<image>\n")
        assert all("<image>" not in h and "<speech>" not in h for h in humans[1:])
        assert ("<speech>" in humans[0]) == (record["id"] in transcripts)
        for t in turns[1::2]:
            assert t["type"] in QUESTION_TYPES and t["value"] in VALUES[t["type"]] and " " not in t["value"]
        assert len({t["type"] for t in turns[1::2]}) == len(turns) // 2  # no type asked twice
        multi += len(turns) > 2
    assert 0.2 <= multi / len(records) <= 0.45, f"{multi} multi-turn records of {len(records)}"
    assert transcripts and all(isinstance(v, str) and v for v in transcripts.values())
    assert {p.suffix for p in (summary.out_dir / "audio").iterdir()} == {".wav", ".mp3"}
    assert summary.num_audio_files == sum("audio" in r for r in records)
    assert summary.question_types == {t: len(v) for t, v in _answers(records).items()}
    phrasings = {t: set() for t in QUESTION_TYPES}
    for record in records:
        for human, gpt in zip(record["conversations"][::2], record["conversations"][1::2], strict=True):
            phrasings[gpt["type"]].add(human["value"].split("\n")[-1])
    assert all(len(p) >= 2 for p in phrasings.values())


def _snapshot(summary: SampleSummary) -> tuple[str, ...]:
    return tuple(
        p.read_text()
        for p in (summary.data_path, summary.transcripts_path, summary.eval_ids_path, summary.train_ids_path)
    )


def test_same_seed_same_set(tmp_path: Path) -> None:
    """Every clip byte for byte, at the demo's 56 px (not a multiple of 16: x264's MB-tree analysis read memory it
    had not written there, and about one encode in three of the same frames differed, 2026-12-02)."""
    a = make_sample_set(tmp_path / "a", clips=12, seed=7, frames=8, size=56, fps=4, progress=False)
    b = make_sample_set(tmp_path / "b", clips=12, seed=7, frames=8, size=56, fps=4, progress=False)
    c = make_sample_set(tmp_path / "c", clips=12, seed=8, frames=8, size=56, fps=4, progress=False)
    assert _snapshot(a) == _snapshot(b)
    assert _snapshot(a)[0] != _snapshot(c)[0]
    clips = sorted(p.name for p in a.video_folder.glob("*.mp4"))
    assert len(clips) == 12
    assert [n for n in clips if (a.video_folder / n).read_bytes() != (b.video_folder / n).read_bytes()] == []


def test_forty_default_clips_take_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = make_sample_set(tmp_path, progress=False)
    elapsed = time.perf_counter() - start
    assert summary.num_records == 40 and len(list(summary.video_folder.glob("*.mp4"))) == 40
    assert elapsed < 20, f"40 clips took {elapsed:.1f}s"


@pytest.mark.parametrize("kwargs", [{"size": 33}, {"frames": 1}, {"eval_fraction": 1.0}, {"clips": 2}])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_sample_set(tmp_path, progress=False, **kwargs)


def test_demo_options_no_audio_fixed_held_out_and_workers_write_the_same_files(tmp_path: Path) -> None:
    from app.data.video import probe_video

    kwargs = dict(clips=12, seed=7, frames=4, size=32, fps=4, progress=False, audio=False, num_eval=3)
    one = make_sample_set(tmp_path / "one", workers=1, **kwargs)
    two = make_sample_set(tmp_path / "two", workers=2, **kwargs)
    assert (one.num_eval, one.num_train) == (3, 9) and len((tmp_path / "two" / "eval_ids.txt").read_text().split()) == 3
    assert one.data_path.read_bytes() == two.data_path.read_bytes()
    clips = sorted(p.name for p in one.video_folder.glob("*.mp4"))
    assert len(clips) == 12
    assert all((one.video_folder / c).read_bytes() == (two.video_folder / c).read_bytes() for c in clips)
    records = json.loads(one.data_path.read_text())
    assert not any("audio" in r for r in records) and one.num_audio_files == one.num_speech_records == 0
    assert not any("<speech>" in t["value"] for r in records for t in r["conversations"])
    assert not (tmp_path / "one" / "audio").exists() and not probe_video(one.video_folder / clips[0]).has_audio


def test_bad_held_out_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_eval must be between 1 and clips - 1"):
        make_sample_set(tmp_path, clips=8, num_eval=8, progress=False)
