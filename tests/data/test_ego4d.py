"""Ego4D record loading: every bad record is a counted skip with a reason, every bad file one line."""

import json
import os
import shutil
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from app.config import DataConfig
from app.data import ego4d
from app.data.ego4d import DataError, load_records


def _write(folder: Path, records) -> DataConfig:
    (folder / "videos").mkdir(exist_ok=True)
    data = folder / "Ego4D.json"
    data.write_text(json.dumps(records))
    return DataConfig(data_path=str(data), video_folder=str(folder / "videos"), eval_fraction=0.0)


def _rec(rid="a", video="a.mp4", convs=None, **extra):
    convs = convs or [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    return {"id": rid, "video": video, "conversations": convs, **extra}


@pytest.fixture
def folder(tmp_path: Path, sample_dir: Path) -> Path:
    """A data folder with two real mp4s copied from the synthetic set."""
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = sorted((sample_dir / "videos").glob("*.mp4"))
    shutil.copy(clips[0], videos / "a.mp4")
    shutil.copy(clips[1], videos / "b.mp4")
    shutil.copy(clips[2], videos / "c.mp4")
    return tmp_path


def test_valid_records_parse_with_turns_and_types(folder):
    convs = [
        {"from": "human", "value": "<image>\nWhat colour?"},
        {"from": "gpt", "value": "red", "type": "color"},
        {"from": "human", "value": "Which way?"},
        {"from": "gpt", "value": "left", "type": "direction"},
    ]
    cfg = _write(folder, [_rec("a", "a.mp4", convs), _rec("b", "b.mp4")])
    report = load_records(cfg)
    assert [r.id for r in report.records] == ["a", "b"]
    first = report.records[0]
    assert first.video == (folder / "videos" / "a.mp4").resolve()
    assert [t.role for t in first.turns] == ["human", "gpt", "human", "gpt"]
    assert first.question_types == ["color", "direction"]
    assert not report.skipped


def test_each_bad_record_is_a_counted_skip_with_its_reason(folder):
    outside = folder / "outside.mp4"
    shutil.copy(folder / "videos" / "a.mp4", outside)
    os.symlink(outside, folder / "videos" / "link.mp4")
    records = [
        _rec("ok", "a.mp4"),
        "not a dict",
        {"id": " ", "video": "a.mp4", "conversations": _rec()["conversations"]},  # no id at all derives one
        _rec("ok", "b.mp4"),  # duplicate id
        {"id": "novideo", "conversations": _rec()["conversations"]},
        _rec("noconv", "a.mp4", convs=[]) | {"conversations": []},
        _rec("nogpt", "a.mp4", [{"from": "human", "value": "<image>\nhi"}]),
        _rec("twoimg", "a.mp4", [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]),
        _rec("role", "a.mp4", [{"from": "system", "value": "x"}, {"from": "gpt", "value": "x"}]),
        _rec("dotdot", "../outside.mp4"),
        _rec("absolute", str(outside)),
        _rec("symlink", "link.mp4"),
        _rec("missing", "nope.mp4"),
    ]
    report = load_records(_write(folder, records))
    assert [r.id for r in report.records] == ["ok"]
    assert report.skipped == {
        ego4d.NOT_AN_OBJECT: 1,
        ego4d.MISSING_ID: 1,
        ego4d.DUPLICATE_ID: 1,
        ego4d.MISSING_VIDEO: 1,
        ego4d.MISSING_CONVERSATIONS: 1,
        ego4d.NO_GPT_TURN: 1,
        ego4d.MULTIPLE_IMAGE: 1,
        ego4d.UNKNOWN_ROLE: 1,
        ego4d.PATH_ESCAPES: 3,
        ego4d.VIDEO_NOT_FOUND: 1,
    }
    assert report.total == len(records)
    assert sum(report.skipped.values()) + len(report.records) == report.total  # nothing lost silently
    assert any("dotdot" in e for e in report.examples[ego4d.PATH_ESCAPES])
    # Every skip is kept in full, not only the three examples per reason.
    kept = report.skipped_records
    assert len(kept) == sum(report.skipped.values())
    assert Counter(s.reason for s in kept) == report.skipped
    escapes = {s.id: s.file for s in kept if s.reason == ego4d.PATH_ESCAPES}
    assert escapes == {"dotdot": "../outside.mp4", "absolute": str(outside), "symlink": "link.mp4"}
    missing = next(s for s in kept if s.reason == ego4d.VIDEO_NOT_FOUND)
    assert (missing.id, missing.file, missing.split) == ("missing", str(folder / "videos" / "nope.mp4"), "train")
    no_object = next(s for s in kept if s.reason == ego4d.NOT_AN_OBJECT)
    assert (no_object.id, no_object.file, no_object.split) == (None, None, None)
    assert all("\n" not in s.describe() for s in kept)


def test_skipped_held_out_records_are_listed_by_split(folder):
    (folder / "eval.txt").write_text("gone-eval\nok-eval\n")
    records = [_rec("ok-eval", "a.mp4"), _rec("gone-eval", "nope.mp4"), _rec("gone-train", "nope.mp4"),
               _rec("nogpt-eval", "a.mp4", [{"from": "human", "value": "<image>\nhi"}])]
    cfg = _write(folder, records)
    cfg.eval_ids_file = str(folder / "eval.txt")
    report = load_records(cfg)
    assert {(s.id, s.split) for s in report.skipped_records} == {
        ("gone-eval", "eval"), ("gone-train", "train"), ("nogpt-eval", "train")}
    assert [s.id for s in report.skipped_held_out()] == ["gone-eval"]
    # Without an ids file the held-out split is the id hash, the same rule kept records follow.
    cfg.eval_ids_file, cfg.eval_fraction = None, 0.5
    hashed = load_records(cfg)
    for s in hashed.skipped_records:
        assert s.split == ("eval" if ego4d._is_eval(s.id, 0.5) else "train")
    assert {r.id: r.split for r in hashed.records} == {"ok-eval": "eval" if ego4d._is_eval("ok-eval", 0.5) else "train"}


def test_undecodable_video_is_skipped_when_probing(folder):
    (folder / "videos" / "text.mp4").write_text("this is not a video")
    (folder / "videos" / "empty.mp4").write_bytes(b"")
    cfg = _write(folder, [_rec("a", "a.mp4"), _rec("t", "text.mp4"), _rec("e", "empty.mp4")])
    from app.data.video import probe_video

    report = load_records(cfg, probe=probe_video)
    assert [r.id for r in report.records] == ["a"]
    assert report.skipped[ego4d.UNDECODABLE] == 2
    assert all("\n" not in e for e in report.examples[ego4d.UNDECODABLE])


def test_video_ids_file_filters_and_reports_unknown_ids(folder):
    ids = folder / "ids.txt"
    ids.write_text("a\n\n   \nghost-1\nb\nghost-2\n")
    cfg = _write(folder, [_rec("a", "a.mp4"), _rec("b", "b.mp4"), _rec("c", "c.mp4")])
    cfg.video_ids_file = str(ids)
    report = load_records(cfg)
    assert [r.id for r in report.records] == ["a", "b"]
    assert report.skipped[ego4d.FILTERED_OUT] == 1
    assert report.unknown_ids == ["ghost-1", "ghost-2"]


def test_eval_split_from_ids_file_and_from_fraction(folder):
    records = [_rec(f"r{i}", "a.mp4") for i in range(200)]
    cfg = _write(folder, records)
    (folder / "eval.txt").write_text("r1\nr2\nzzz\n")
    cfg.eval_ids_file = str(folder / "eval.txt")
    report = load_records(cfg)
    assert [r.id for r in report.eval] == ["r1", "r2"]
    assert report.unknown_eval_ids == ["zzz"]
    cfg.eval_ids_file = None
    cfg.eval_fraction = 0.25
    split = load_records(cfg)
    assert 25 <= len(split.eval) <= 75  # deterministic hash split near the fraction
    assert [r.id for r in load_records(cfg).eval] == [r.id for r in split.eval]


def test_speech_drop_and_transcript(folder):
    convs = [{"from": "human", "value": "<image>\n<speech>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    cfg = _write(folder, [_rec("a", "a.mp4", convs), _rec("b", "b.mp4", convs)])
    dropped = load_records(cfg).records[0].turns[0].value
    assert dropped == "<image>\nWhat colour?"
    (folder / "tr.json").write_text(json.dumps({"a": "I am holding a cup"}))
    cfg.transcripts_file = str(folder / "tr.json")
    cfg.speech_strategy = "transcript"
    report = load_records(cfg)
    assert report.records[0].turns[0].value == "<image>\nI am holding a cup\nWhat colour?"
    assert report.skipped[ego4d.NO_TRANSCRIPT] == 1  # b has no transcript: reported, not guessed


def test_audio_paths_confined_and_missing_audio_is_a_warning(folder):
    (folder / "a.wav").write_bytes(b"RIFF")
    records = [
        _rec("a", "a.mp4", audio="a.wav"),
        _rec("b", "b.mp4", audio="gone.wav"),
        _rec("c", "a.mp4", audio="../../etc/passwd"),
    ]
    report = load_records(_write(folder, records))
    assert [r.id for r in report.records] == ["a", "b"]
    assert report.records[0].audio == (folder / "a.wav").resolve()
    assert report.records[1].audio is None
    assert report.warnings[ego4d.AUDIO_MISSING] == 1
    assert report.skipped[ego4d.PATH_ESCAPES] == 1


@pytest.mark.parametrize(
    "content, words",
    [
        (b'{"id": "a"}', "expected a JSON list"),
        (b"[{", "not valid JSON"),
        (b'["caf\xe9"]', "not UTF-8"),
    ],
)
def test_bad_data_file_is_one_line_naming_it(folder, content, words):
    cfg = _write(folder, [])
    Path(cfg.data_path).write_bytes(content)
    with pytest.raises(DataError) as exc:
        load_records(cfg)
    assert words in str(exc.value) and cfg.data_path in str(exc.value) and "\n" not in str(exc.value)


def test_missing_data_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_records(DataConfig(data_path=str(tmp_path / "x.json"), video_folder=str(tmp_path)))
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(DataError, match="video folder not found"):
        load_records(DataConfig(data_path=str(tmp_path / "x.json"), video_folder=str(tmp_path / "nope")))


def test_file_names_match_after_unicode_normalisation(folder):
    def nfc(s: str) -> str:
        return unicodedata.normalize("NFC", s)

    def nfd(s: str) -> str:
        return unicodedata.normalize("NFD", s)

    videos, clip = folder / "videos", folder / "videos" / "a.mp4"
    assert nfc("café.mp4") != nfd("café.mp4")
    shutil.copy(clip, videos / nfd("café.mp4"))  # as macOS writes it
    shutil.copy(clip, videos / nfc("crème.mp4"))
    (videos / nfd("Küche")).mkdir()  # a folder in one form, the file inside in the other
    shutil.copy(clip, videos / nfd("Küche") / nfc("Tür.mp4"))
    (folder / nfd("Straße-ö.wav")).write_bytes(b"RIFF")
    (folder / "outside").mkdir()
    shutil.copy(clip, folder / "outside" / nfd("fuß.mp4"))
    os.symlink(folder / "outside" / nfd("fuß.mp4"), videos / nfd("lien-é.mp4"))
    records = [
        _rec("nfc-record", nfc("café.mp4"), audio=nfc("Straße-ö.wav")),
        _rec("nfd-record", nfd("crème.mp4")),
        _rec("mixed", nfc("Küche/Tür.mp4")),
        _rec("escape", "../outside/" + nfc("fuß.mp4")),
        _rec("symlink-out", nfc("lien-é.mp4")),
        _rec("absent", nfc("gâteau.mp4")),
    ]
    report = load_records(_write(folder, records))
    found = {r.id: r for r in report.records}
    assert found["nfc-record"].video == (videos / nfd("café.mp4")).resolve()
    assert found["nfc-record"].audio == (folder / nfd("Straße-ö.wav")).resolve()
    assert found["nfd-record"].video == (videos / nfc("crème.mp4")).resolve()
    assert found["mixed"].video == (videos / nfd("Küche") / nfc("Tür.mp4")).resolve()
    assert not report.warnings
    # Another spelling never reaches outside the video folder.
    skipped = {s.id: s.reason for s in report.skipped_records}
    assert skipped == {"escape": ego4d.PATH_ESCAPES, "symlink-out": ego4d.PATH_ESCAPES, "absent": ego4d.VIDEO_NOT_FOUND}
