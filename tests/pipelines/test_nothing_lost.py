"""Nothing is lost silently: broken held-out clips show up in the printed report, the results JSON, the MLflow
tags and artifact; `compare` refuses runs scored on different questions.

Real components: the tiny model, real mp4 clips, the session's SQLite MLflow store. In-process `baseline`
calls (no training): three short evaluations over an 11-record copy of the 12-clip sample set. `compare` runs in
this process too, and once as users run it (the installed script's end-to-end `compare`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from cli_helpers import TINY, ego, ego_here

from app.run_files import RunFiles

TRUNCATED, NOT_A_VIDEO = "clip_trunc", "clip_text"


def _copy_set(src: Path, dst: Path, held_out: list[str], train: list[str]) -> list[dict]:
    """Only the chosen records and their clips (copied: a symlink out of the folder would be refused)."""
    records = {r["id"]: r for r in json.loads((src / "Ego4D.json").read_text())}
    (dst / "videos").mkdir(parents=True)
    chosen = [records[i] for i in held_out + train]
    for r in chosen:
        shutil.copy(src / "videos" / r["video"], dst / "videos" / r["video"])
    (dst / "Ego4D.json").write_text(json.dumps(chosen))
    (dst / "eval_ids.txt").write_text("\n".join(held_out) + "\n")
    return chosen


def _questions(record: dict) -> int:
    return sum(t["from"] == "gpt" for t in record["conversations"])


@pytest.fixture(scope="module")
def sets(sample_dir, tmp_path_factory) -> dict:
    """5 held-out + 4 train records, plus two held-out records `clip_trunc` / `clip_text`: in `broken` their clips
    are damaged (truncated to 30% of its bytes; a text file named .mp4), in `intact` they are good copies."""
    root = tmp_path_factory.mktemp("nothing_lost")
    train = ["clip_0000", "clip_0001", "clip_0002", "clip_0003"]
    ids = [r["id"] for r in json.loads((sample_dir / "Ego4D.json").read_text())]
    held_out = [i for i in ids if i not in train][:5]
    _copy_set(sample_dir, root / "intact", held_out, train)
    chosen = _copy_set(sample_dir, root / "broken", held_out, train)
    source = next(r for r in chosen if r["id"] == "clip_0000")  # a train clip with 3 questions, reused twice
    extra = []
    for rid in (TRUNCATED, NOT_A_VIDEO):
        extra.append({**source, "id": rid, "video": f"{rid}.mp4"})
    data = (sample_dir / "videos" / source["video"]).read_bytes()
    for name in ("intact", "broken"):
        (root / name / "Ego4D.json").write_text(json.dumps(chosen + extra))
        (root / name / "eval_ids.txt").write_text("\n".join([*held_out, TRUNCATED, NOT_A_VIDEO]) + "\n")
        for rid in (TRUNCATED, NOT_A_VIDEO):
            (root / name / "videos" / f"{rid}.mp4").write_bytes(data)
    (root / "broken" / "videos" / f"{TRUNCATED}.mp4").write_bytes(data[: int(len(data) * 0.3)])
    (root / "broken" / "videos" / f"{NOT_A_VIDEO}.mp4").write_text("this is a text file, not a video\n")
    return {"intact": root / "intact", "broken": root / "broken", "per_broken": _questions(source),
            "good": sum(_questions(r) for r in chosen if r["id"] in held_out)}


@pytest.fixture(scope="module")
def experiment() -> str:
    return f"nothing-lost-{uuid.uuid4().hex[:8]}"


def _cfg(data: Path, out: Path, cache: Path, experiment: str, *extra: str):
    from app.config import load_config

    return load_config(TINY, [
        f"data.data_path={data / 'Ego4D.json'}", f"data.video_folder={data / 'videos'}",
        f"data.eval_ids_file={data / 'eval_ids.txt'}", f"model.cache_dir={cache}", f"output_dir={out}",
        f"data.frame_cache_dir={out / 'frames'}", f"tracking.experiment={experiment}", *extra,
    ])


def _baseline(cfg) -> tuple[dict, str, str]:
    """Results, console output and the MLflow run id of one in-process baseline."""
    import mlflow

    from app.console import console
    from app.pipelines import evaluate

    # capsys is per test; rich's own capture works in a module fixture and leaves the console as it was.
    with console.capture() as captured:
        results = evaluate.baseline(cfg)
    return results, captured.get(), mlflow.last_active_run().info.run_id  # the run this call made


@pytest.fixture(scope="module")
def runs(sets, model_cache, tmp_path_factory, experiment):
    """Three baselines: broken set (clips refused while loading), broken set without the load-time check
    (clips fail at decode time instead), intact set. Module-scoped: each costs seconds, asserts share them."""
    root = tmp_path_factory.mktemp("nothing_lost_runs")
    out = {}
    for name, data, extra in (("loading", sets["broken"], ()),
                              ("decode", sets["broken"], ("data.check_decodable=false",)),
                              ("intact", sets["intact"], ())):
        cfg = _cfg(data, root / name, model_cache, experiment, *extra)
        results, console, run_id = _baseline(cfg)
        out[name] = {"results": results, "console": console, "run_id": run_id, "out": root / name, "cfg": cfg}
    return out


def _skipped_by_id(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in results["skipped"]:
        out.setdefault(s["id"], []).append(s)
    return out


def test_clips_refused_while_loading_are_reported_counted_tagged_and_logged(runs, sets):
    import mlflow

    run = runs["loading"]
    results, console = run["results"], run["console"]
    # The data report is printed, and names both held-out records with their reasons.
    assert "usable: 9 of 11 records (train 4, held-out 5); skipped: 2 (2 held-out)" in console
    assert "held-out records left out, their questions cannot be scored: 2" in console
    assert TRUNCATED in console and NOT_A_VIDEO in console

    # Results JSON: each refused record with its reason and its questions; the 5 good ones are all scored.
    good, lost = sets["good"], 2 * sets["per_broken"]
    skipped = _skipped_by_id(results)
    assert set(skipped) == {TRUNCATED, NOT_A_VIDEO}
    for rid in (TRUNCATED, NOT_A_VIDEO):
        (entry,) = skipped[rid]
        assert entry["stage"] == "loading" and entry["questions"] == sets["per_broken"] and entry["split"] == "eval"
        assert entry["reason"] and entry["file"].endswith(f"{rid}.mp4")
    assert (results["num_answered"], results["num_questions"], results["num_skipped"]) == (good, good + lost, lost)
    assert results["held_out_records"] == {"total": 7, "skipped_while_loading": 2, "skipped_at_decode": 0}
    files = RunFiles(run["out"]).baseline()
    on_disk = json.loads(files.results.read_text())
    assert on_disk["skipped"] == results["skipped"] and on_disk["questions_hash"] == results["questions_hash"]
    assert f"scored {good} of {good + lost} held-out questions; skipped {lost} (" in console
    assert "2 of 7 held-out records not scored" in console

    # MLflow: filterable tags, and every skipped record as an artifact (also written beside the results).
    client = mlflow.MlflowClient()
    tags = client.get_run(run["run_id"]).data.tags
    assert tags["skipped"] == "2" and tags["skipped_held_out"] == "2"
    assert tags["eval_questions"] == str(good) and tags["eval_questions_skipped"] == str(lost)
    assert tags["eval_questions_hash"] == results["questions_hash"]
    artifact = json.loads(Path(client.download_artifacts(run["run_id"], "data/skipped_records.json",
                                                         str(run["out"] / "dl"))).read_text())
    local = json.loads(files.skipped.read_text())
    assert artifact == local
    assert artifact["total_records"] == 11 and artifact["usable_records"] == 9
    rows = {r["id"]: r for r in artifact["skipped"]}
    assert set(rows) == {TRUNCATED, NOT_A_VIDEO}
    assert all(r["split"] == "eval" and r["stage"] == "loading" and r["reason"] and r["file"] for r in rows.values())


def test_clips_that_fail_at_decode_time_are_skipped_with_their_reason(runs, sets):
    run = runs["decode"]
    results = run["results"]
    skipped = _skipped_by_id(results)
    # Without the load-time check the text file reaches the evaluator: every one of its questions is listed.
    assert NOT_A_VIDEO in skipped
    entries = skipped[NOT_A_VIDEO]
    assert sorted(e["key"] for e in entries) == [f"{NOT_A_VIDEO}#{k}" for k in range(sets["per_broken"])]
    for e in entries:
        assert e["stage"] == "evaluation" and e["file"].endswith(f"{NOT_A_VIDEO}.mp4")
        assert e["reason"] and "\n" not in e["reason"] and str(e["file"]) not in e["reason"]
    total = sets["good"] + 2 * sets["per_broken"]
    assert results["num_answered"] + results["num_skipped"] == results["num_questions"] == total
    assert results["held_out_records"]["skipped_while_loading"] == 0
    assert results["held_out_records"]["skipped_at_decode"] == len(skipped)
    assert f"scored {results['num_answered']} of {total} held-out questions; skipped {results['num_skipped']} (" \
        in run["console"]
    local = json.loads(RunFiles(run["out"]).baseline().skipped.read_text())
    assert NOT_A_VIDEO in {r["id"] for r in local["skipped"] if r["stage"] == "evaluation"}


def test_compare_refuses_runs_scored_on_different_questions(runs, sets, tmp_path):
    from app.errors import UserError
    from app.pipelines.compare import compare

    loading, decode, intact = runs["loading"], runs["decode"], runs["intact"]
    good, every = sets["good"], sets["good"] + 2 * sets["per_broken"]
    # Refused while loading or at decode time: the same questions were scored, so the hashes agree.
    assert decode["results"]["questions_hash"] == loading["results"]["questions_hash"]
    same = compare(loading["cfg"], loading["run_id"], decode["run_id"], out=tmp_path / "same")
    assert same["same_questions"] == "yes"
    md = Path(same["report_md"]).read_text()
    assert "same questions: yes" in md and f"Held-out questions scored: M0 {good}, M1 {good}" in md
    assert "| held-out records skipped while loading | 2 | 0 |" in md
    assert f"| held-out questions skipped | {every - good} | {every - good} |" in md

    # The repaired data set scores the two records too: a different question set, refused in one line.
    assert intact["results"]["num_answered"] == every and not intact["results"]["skipped"]
    with pytest.raises(UserError) as refused:
        compare(loading["cfg"], loading["run_id"], intact["run_id"], out=tmp_path / "refused")
    message = str(refused.value)
    assert "\n" not in message and "--allow-different-questions" in message
    assert loading["results"]["questions_hash"] in message and intact["results"]["questions_hash"] in message
    assert f"M0 {good} questions" in message and f"M1 {every} questions" in message
    assert not (tmp_path / "refused").exists()

    allowed = compare(loading["cfg"], loading["run_id"], intact["run_id"], out=tmp_path / "allowed",
                      allow_different_questions=True)
    assert allowed["same_questions"] == "no"
    for path in (allowed["report_md"], allowed["report_html"]):
        text = Path(path).read_text()
        assert "same questions: no" in text and "scored on different held-out questions" in text


def test_compare_cli_flag(runs, experiment, tmp_path):
    a, b = runs["loading"]["run_id"], runs["intact"]["run_id"]
    args = ["compare", "--baseline", a, "--candidate", b, "--config", TINY, "--set",
            f"tracking.experiment={experiment}", "--out", tmp_path]
    refused = ego_here(*args)
    assert refused.returncode == 1 and "different held-out questions" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "report.md").exists()
    # As users run it, on the session's store (inherited through MLFLOW_TRACKING_URI).
    allowed = ego(*args, "--allow-different-questions")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "same questions: no" in (tmp_path / "report.md").read_text()
