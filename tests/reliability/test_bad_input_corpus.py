"""The bad-input corpus: every way a user's input goes wrong that we know of, each with its expected outcome.

Every case is built by the test (real broken mp4s, real bad JSON), run through the real command line
in-process, and must end as one of:
  skip     a counted skip (or warning) shown by `data validate`, exit 0 while something usable remains
  error    exit 1 with a one-line message naming the culprit
Never a traceback, never a silent drop: `data validate` must account for every record.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from media_helpers import write_audio_only_mp4
from typer.testing import CliRunner

from app.data import ego4d
from app.data.synthetic import write_clip

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"
CHECKED: list[str] = []  # case names that met their expectation; conftest prints the count


def rec(rid: str = "bad", video: str = "bad.mp4", convs: list | None = None, **extra) -> dict:
    convs = convs if convs is not None else [
        {"from": "human", "value": "<image>\nWhat colour is the cup?"}, {"from": "gpt", "value": "red"}]
    return {"id": rid, "video": video, "conversations": convs, **extra}


@dataclass
class Env:
    """One case's folder: data.json, videos/ (holding good.mp4) and the --set arguments pointing at them."""

    root: Path
    good_clip: Path
    records: list

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def data(self) -> Path:
        return self.root / "Ego4D.json"

    def sets(self) -> list[str]:
        return [f"data.data_path={self.data}", f"data.video_folder={self.videos}", "data.eval_fraction=0.0",
                "data.eval_ids_file=null", f"output_dir={self.root / 'out'}", f"model.cache_dir={self.root / 'models'}",
                f"data.frame_cache_dir={self.root / 'frames'}"]


@dataclass
class Case:
    name: str
    build: Callable[[Env], list[str] | None]  # edits env; returns extra CLI args (default: `data validate`)
    outcome: str  # "skip" | "warning" | "error"
    words: str  # must appear in the output: the skip reason or the error text
    culprit: str = ""  # must appear too: the record id, file or key at fault
    exit_code: int = 0


def _video(env: Env, name: str, content: bytes | None = None, records: list | None = None) -> None:
    if content is not None:
        (env.videos / name).write_bytes(content)
    env.records.append(rec("bad", name))


def _add(env: Env, record) -> None:
    env.records.append(record)


def _symlink_out(env: Env) -> None:
    outside = env.root / "outside.mp4"
    shutil.copy(env.good_clip, outside)
    os.symlink(outside, env.videos / "link.mp4")
    env.records.append(rec("bad", "link.mp4"))


def _ids_file(env: Env) -> list[str]:
    ids = env.root / "ids.txt"
    ids.write_text("\n   \ngood\n\nghost-1\n  ghost-2  \n\n")
    return ["data", "validate", "--set", f"data.video_ids_file={ids}"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


def _short_clip(env: Env) -> None:
    write_clip(env.videos / "short.mp4", np.full((3, 56, 56, 3), 90, dtype=np.uint8), 8, None)
    env.records.append(rec("bad", "short.mp4"))


def _write_text(env: Env, raw: bytes) -> None:
    env.records = None  # the data file is written as-is
    env.data.write_bytes(raw)


def _config_file(env: Env, text: str) -> list[str]:
    path = env.root / "bad.yaml"
    path.write_text(text)
    return ["data", "validate", "--config", str(path)]


GOOD_TURNS = rec()["conversations"]
CASES = [
    # --- video files: counted skips (record "bad"), or a warning when the clip is merely short
    Case("truncated mp4", lambda e: _video(e, "bad.mp4", e.good_clip.read_bytes()[:1500]),
         "skip", ego4d.UNDECODABLE, "bad"),
    Case("zero-byte mp4", lambda e: _video(e, "bad.mp4", b""), "skip", ego4d.UNDECODABLE, "empty file"),
    Case("text file named .mp4", lambda e: _video(e, "bad.mp4", b"a shopping list, not a video\n"),
         "skip", ego4d.UNDECODABLE, "bad"),
    Case("mp4 with no video stream", lambda e: (write_audio_only_mp4(e.videos / "bad.mp4", 0.5), _add(e, rec()))[1],
         "skip", ego4d.UNDECODABLE, "no video stream"),
    Case("clip shorter than the frames asked", _short_clip, "warning", ego4d.SHORT_CLIP, "bad"),
    Case("video file missing", lambda e: _video(e, "nope.mp4"), "skip", ego4d.VIDEO_NOT_FOUND, "nope.mp4"),
    # --- audio: the record is kept without its audio, and the user is told
    Case("audio file missing", lambda e: _add(e, rec(video="good.mp4", audio="gone.wav")),
         "warning", ego4d.AUDIO_MISSING, "gone.wav"),
    Case("audio file corrupt", lambda e: ((e.root / "noise.wav").write_bytes(b"RIFF but not really" * 10),
                                          _add(e, rec(video="good.mp4", audio="noise.wav")))[1],
         "warning", ego4d.AUDIO_UNREADABLE, "noise.wav"),
    # --- records
    Case("record that is not an object", lambda e: _add(e, "just a string"), "skip", ego4d.NOT_AN_OBJECT, "#1"),
    Case("record with an empty id", lambda e: _add(e, {"id": "", "video": "good.mp4", "conversations": GOOD_TURNS}),
         "skip", ego4d.MISSING_ID, "#1"),
    # peer format (lmms-finetune): no id at all -> one derived from the video path, never taking an existing id
    Case("record without id", lambda e: _add(e, {"video": "good.mp4", "conversations": GOOD_TURNS}),
         "warning", ego4d.DERIVED_ID, "good#2"),
    Case("record missing video", lambda e: _add(e, {"id": "bad", "conversations": GOOD_TURNS}),
         "skip", ego4d.MISSING_VIDEO, "bad"),
    Case("record missing conversations", lambda e: _add(e, {"id": "bad", "video": "good.mp4"}),
         "skip", ego4d.MISSING_CONVERSATIONS, "bad"),
    Case("conversation with no gpt turn",
         lambda e: _add(e, rec(video="good.mp4", convs=[{"from": "human", "value": "<image>\nhi"}])),
         "skip", ego4d.NO_GPT_TURN, "bad"),
    Case("<image> twice", lambda e: _add(e, rec(video="good.mp4", convs=[
        {"from": "human", "value": "<image>\n<image>\nhi"}, {"from": "gpt", "value": "red"}])),
         "skip", ego4d.MULTIPLE_IMAGE, "bad"),
    Case("unknown role", lambda e: _add(e, rec(video="good.mp4", convs=[
        {"from": "system", "value": "<image>"}, {"from": "gpt", "value": "red"}])),
         "skip", ego4d.UNKNOWN_ROLE, "bad"),
    Case("duplicate id", lambda e: _add(e, rec("good", "good.mp4")), "skip", ego4d.DUPLICATE_ID, "good"),
    Case("path escaping with ../", lambda e: (shutil.copy(e.good_clip, e.root / "up.mp4"),
                                              _add(e, rec(video="../up.mp4")))[1],
         "skip", ego4d.PATH_ESCAPES, "../up.mp4"),
    Case("absolute path outside", lambda e: (shutil.copy(e.good_clip, e.root / "abs.mp4"),
                                             _add(e, rec(video=str(e.root / "abs.mp4"))))[1],
         "skip", ego4d.PATH_ESCAPES, "abs.mp4"),
    Case("symlink out of video_folder", _symlink_out, "skip", ego4d.PATH_ESCAPES, "link.mp4"),
    Case("audio path escaping", lambda e: _add(e, rec(video="good.mp4", audio="../../etc/passwd")),
         "skip", ego4d.PATH_ESCAPES, "passwd"),
    Case("video_ids_file with blank lines and unknown ids", _ids_file, "skip", "2 unknown ids", "ghost-1"),
    # --- data files: nothing usable at all -> exit 1, one line naming the file
    Case("JSON that is not a list", lambda e: _write_text(e, b'{"id": "x"}'), "error", "expected a JSON list",
         "Ego4D.json", 1),
    Case("JSON syntax error", lambda e: _write_text(e, b'[{"id": "x",]'), "error", "not valid JSON (line 1",
         "Ego4D.json", 1),
    Case("non-UTF-8 data file", lambda e: _write_text(e, '[{"id": "caf\xe9"}]'.encode("latin-1")), "error",
         "not UTF-8", "Ego4D.json", 1),
    Case("empty data set", lambda e: _write_text(e, b"[]"), "error", "nothing usable", "usable: 0 of 0", 1),
    Case("every record bad", lambda e: setattr(e, "records", [rec("x", "nope.mp4"), rec("y", "../z.mp4")]),
         "error", "nothing usable", ego4d.VIDEO_NOT_FOUND, 1),
    Case("data file missing", lambda e: ["data", "validate", "--set", f"data.data_path={e.root / 'gone.json'}"],
         "error", "data file not found", "gone.json", 1),
    Case("video folder missing", lambda e: ["data", "validate", "--set", f"data.video_folder={e.root / 'novid'}"],
         "error", "video folder not found", "novid", 1),
    # --- configuration
    Case("config with an unknown key", lambda e: _config_file(e, "training:\n  epochs: 3\n"), "error",
         "unknown key 'training.epochs'", "num_epochs", 1),
    Case("config with a wrong type", lambda e: _config_file(e, "training:\n  num_epochs: many\n"), "error",
         "key 'training.num_epochs'", "'many'", 1),
    Case("negative epochs", lambda e: ["data", "validate", "--set", "training.num_epochs=-2"], "error",
         "greater than 0", "training.num_epochs", 1),
    Case("config that is not YAML", lambda e: _config_file(e, "training: [unclosed\n"), "error",
         "not valid YAML", "bad.yaml", 1),
    # --- runs that must stop before any model loads
    Case("unreachable tracking URI", lambda e: ["baseline", "--set", f"tracking.uri=http://127.0.0.1:{_closed_port()}"],
         "error", "unreachable", "http://127.0.0.1:", 1),
    Case("output dir not writable", lambda e: ((e.root / "afile").write_text("x"),
                                               ["baseline", "--set", f"output_dir={e.root / 'afile' / 'out'}"])[1],
         "error", "not writable", "afile", 1),
]


@pytest.fixture(scope="module")
def good_clip(sample_dir: Path) -> Path:
    return sorted((sample_dir / "videos").glob("*.mp4"))[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, good_clip: Path, tmp_path: Path) -> None:
    from app.cli import app

    env = Env(tmp_path, good_clip, [rec("good", "good.mp4")])
    env.videos.mkdir()
    shutil.copy(good_clip, env.videos / "good.mp4")
    args = case.build(env) or ["data", "validate"]
    if env.records is not None:
        env.data.write_text(json.dumps(env.records))
    sets = [a for s in env.sets() for a in ("--set", s)]
    if "--config" not in args:
        sets = ["--config", str(TINY), *sets]
    # Options after the case's own: its --set wins over the defaults pointing at env.
    cmd = [*args[:2], *sets, *args[2:]] if args[0] == "data" else [args[0], *sets, *args[1:]]
    result = CliRunner().invoke(app, cmd, env={"COLUMNS": "250", "NO_COLOR": "1"})
    out = result.output

    assert result.exception is None or isinstance(result.exception, SystemExit), f"traceback: {result.exception!r}"
    assert "Traceback" not in out
    assert result.exit_code == case.exit_code, out
    assert case.words in out, out
    assert case.culprit in out, out
    if case.outcome == "error":
        lines = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 or "nothing usable" in out, out
    if case.outcome in ("skip", "warning") and env.records is not None:
        # Nothing dropped silently: usable + skipped = total, and the good record survived.
        usable, total = (int(x) for x in out.split("usable: ")[1].split(" records")[0].split(" of "))
        skipped = int(out.split("skipped: ")[-1].split()[0])
        assert usable + skipped == total == len(env.records), out
        assert usable >= 1
    CHECKED.append(case.name)
