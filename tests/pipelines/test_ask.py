"""`ask`: the answer to one question about one clip is the evaluation's answer to it (one code path), streamed;
bad input is one line."""

from __future__ import annotations

import json

from cli_helpers import TINY, ego_here, tiny_sets

from app.run_files import RunFiles


def _first_plain_question(trained_qlora):
    predictions = RunFiles(trained_qlora).train_eval("qlora").predictions
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    return next(r for r in rows if r["gpt_index"] == 0 and "<speech>" not in r["question"])


def test_ask_answers_as_the_evaluation_did_and_base_too_answers_first(trained_qlora, sample40, model_cache):
    row = _first_plain_question(trained_qlora)
    adapter = RunFiles(trained_qlora).final_model("qlora")
    res = ego_here("ask", sample40 / "videos" / f"{row['id']}.mp4", row["question"], "--model", adapter, "--base-too",
                   "--use-cpu", "--config", TINY, *tiny_sets(sample40, model_cache, trained_qlora))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    answered = next(line for line in lines if line.startswith(f"{adapter}: "))
    assert answered.removeprefix(f"{adapter}: ").strip() == row["prediction"]
    assert any(line.startswith("base: ") for line in lines) and "loaded " in res.stdout
    assert lines.index(answered) > next(i for i, line in enumerate(lines) if line.startswith("base: "))
    assert f"({adapter}: " in res.stdout  # seconds per answer


def test_bad_input_is_one_line(sample40, model_cache, tmp_path):
    clip = sample40 / "videos" / "clip_0000.mp4"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 2048)
    sets = tiny_sets(sample40, model_cache, tmp_path / "out")
    for args, words in (
        ([clip, "what?", "--model", str(tmp_path / "nope")], "not 'base', an adapter folder"),
        ([tmp_path / "missing.mp4", "what?"], "video not found"),
        ([clip, "  "], "the question is empty"),
        ([broken, "what?"], str(broken)),
    ):
        res = ego_here("ask", *args, "--use-cpu", "--config", TINY, *sets)
        assert res.returncode == 1, (args, res.stdout)
        assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_speech_in_the_question_is_dropped_or_transcribed_as_in_training(sample40, model_cache, tmp_path, tiny_asr):
    clip = sample40 / "videos" / "clip_0000.mp4"  # an mp4 with its own audio track
    sets = tiny_sets(sample40, model_cache, tmp_path / "out")
    question = "<speech>\nWhat colour is the object?"
    dropped = ego_here("ask", clip, question, "--use-cpu", "--config", TINY, *sets)
    assert dropped.returncode == 0, dropped.stderr
    transcript = ["--set", "data.speech_strategy=transcript"]
    heard = ego_here("ask", clip, question, "--use-cpu", "--config", TINY, *sets, *transcript,
                     "--set", f"data.asr_model={tiny_asr}")
    assert heard.returncode == 0, heard.stderr
    for args, words in (([*transcript, "--set", f"data.transcripts_file={tmp_path / 't.json'}"],
                         "needs data.asr_model"),
                        (["--audio", str(clip)], "the question has no <speech>")):
        res = ego_here("ask", clip, question if "--audio" not in args else "What colour?", "--use-cpu",
                       "--config", TINY, *sets, *args)
        assert res.returncode == 1 and words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
