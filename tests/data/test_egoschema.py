"""`data import egoschema` on a small EgoSchema-shaped fixture: records in our format, lettered options in
lmms-eval's wording, every question without a clip or an answer a counted skip, the same bytes on a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import ego_here

from app.config import DataConfig
from app.data.ego4d import load_records
from app.data.media_files import write_clip

OPTIONS = ["C cuts a tomato", "C washes a pan", "C reads a book", "C folds laundry", "C waters a plant"]


def _question(q_uid: str, **extra) -> dict:
    q = {"q_uid": q_uid, "google_drive_id": "x", "question": f"What is C doing in {q_uid}?"}
    q.update({f"option {i}": f"{o} ({q_uid})" for i, o in enumerate(OPTIONS)})
    return {**q, **extra}


@pytest.fixture
def egoschema(tmp_path: Path) -> dict[str, Path]:
    videos = tmp_path / "videos"
    (videos / "nested").mkdir(parents=True)
    clip = np.zeros((4, 32, 32, 3), np.uint8)
    for q_uid, folder in (("q1", videos), ("q2", videos / "nested"), ("q4", videos), ("q6", videos)):
        write_clip(folder / f"{q_uid}.mp4", clip, 4, None)
    questions = [_question("q1"), _question("q2"), _question("q3"), _question("q4"),
                 {"q_uid": "q5", "question": "no options"}, _question("q6"), _question("q1")]
    answers = {"q1": 3, "q2": "0", "q3": 1, "q5": 2, "q6": 7}  # q3 has no clip, q4 no answer, q6 a bad index
    (tmp_path / "questions.json").write_text(json.dumps(questions))
    (tmp_path / "subset_answers.json").write_text(json.dumps(answers))
    return {"questions": tmp_path / "questions.json", "answers": tmp_path / "subset_answers.json",
            "videos": videos, "out": tmp_path / "egoschema.json"}


def _import(paths: dict[str, Path]):
    return ego_here("data", "import", "egoschema", "--questions", paths["questions"], "--answers", paths["answers"],
                    "--videos", paths["videos"], "--out", paths["out"])


def test_import_writes_lettered_mcq_records_and_counts_every_skip(egoschema):
    res = _import(egoschema)
    assert res.returncode == 0, res.stderr
    records = json.loads(egoschema["out"].read_text())
    assert [r["id"] for r in records] == ["q1", "q2"]
    assert records[1]["video"] == "nested/q2.mp4"
    human, gpt = records[0]["conversations"]
    assert human["value"] == ("<video>\nWhat is C doing in q1?\n" + "\n".join(
        f"{letter}. {o} (q1)" for letter, o in zip("ABCDE", OPTIONS, strict=True))
        + "\nAnswer with the option's letter from the given choices directly.")
    assert gpt == {"from": "gpt", "value": "D", "type": "mcq", "options": [f"{o} (q1)" for o in OPTIONS]}
    assert records[1]["conversations"][1]["value"] == "A"  # "0" as a string index is read too
    assert egoschema["out"].with_suffix(".ids.txt").read_text() == "q1\nq2\n"  # eval_ids_file: all held out
    out = res.stdout
    assert "wrote 2 records" in out and "skipped 5" in out
    for reason, q_uid in (("no <q_uid>.mp4 under the videos folder", "q3"), ("no answer in the answers file", "q4"),
                          ("malformed question", "q5"), ("answer is not an option index 0-4", "q6"),
                          ("duplicate q_uid", "q1")):
        line = next((line for line in out.splitlines() if reason in line), "")
        assert q_uid in line, (reason, out)


def test_import_is_idempotent_and_its_records_load_with_options(egoschema):
    assert _import(egoschema).returncode == 0
    first = egoschema["out"].read_bytes()
    assert _import(egoschema).returncode == 0
    assert egoschema["out"].read_bytes() == first
    report = load_records(DataConfig(data_path=str(egoschema["out"]), video_folder=str(egoschema["videos"]),
                                     eval_fraction=0.5, check_decodable=False))
    assert sorted(r.id for r in report.records) == ["q1", "q2"] and not report.skipped
    gpt = [t for t in report.records[0].turns if t.role == "gpt"][0]
    assert gpt.type == "mcq" and len(gpt.options) == 5


def test_missing_inputs_are_one_line_errors_naming_the_file(egoschema, tmp_path):
    for key, words in (("questions", "questions file not found"), ("answers", "answers file not found"),
                       ("videos", "videos folder not found")):
        paths = {**egoschema, key: tmp_path / "absent"}
        res = _import(paths)
        assert res.returncode == 1 and words in res.stderr and str(tmp_path / "absent") in res.stderr
        assert "Traceback" not in res.stderr


def test_options_on_a_turn_must_be_a_list_of_strings(tmp_path):
    from app.data.ego4d import BAD_OPTIONS

    (tmp_path / "v.mp4").write_bytes(b"")
    bad = [{"id": f"r{i}", "video": "v.mp4", "conversations": [{"from": "human", "value": "<video>\nq"},
                                                                {"from": "gpt", "value": "A", "options": o}]}
           for i, o in enumerate(["A", ["only one"], [1, 2]])]
    (tmp_path / "d.json").write_text(json.dumps(bad))
    report = load_records(DataConfig(data_path=str(tmp_path / "d.json"), video_folder=str(tmp_path),
                                     check_decodable=False))
    assert report.skipped[BAD_OPTIONS] == 3 and not report.records
