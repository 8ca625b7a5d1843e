"""`ego4d-ft baseline` and `ego4d-ft evaluate` (app/pipelines/evaluate.py): files, resumption, agreement with
train's own evaluation, DeepSpeed refused — on the tiny model and real mp4s.

In this process (`ego_here`), except the run that is killed midway and the one that proves the installed script
works as users run it: the evaluation of a trained adapter.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from cli_helpers import EGO, REPO, TINY, ego, ego_here, tiny_sets

from app.run_files import RunFiles

METRICS = ("exact_match", "token_f1", "rouge_l", "bleu4", "anls", "answer_nll", "perplexity")


def test_baseline_writes_results_profiling_and_predictions(sample40, model_cache, tmp_path):
    res = ego_here("baseline", "--config", TINY, "--use-cpu", *tiny_sets(sample40, model_cache, tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    files = RunFiles(tmp_path).baseline()
    results = json.loads(files.results.read_text())
    m = results["metrics"]
    for key in METRICS:
        assert m[key] is not None, key
    assert 0 <= m["exact_match"] <= 1 and m["perplexity"] >= 1
    assert m["accuracy_by_type"] and set(m["accuracy_by_type"]) <= {"color", "direction", "shape"}
    # Each type's accuracy comes with the questions it is over and its chance level (4 balanced answers: ~1/4).
    assert set(m["count_by_type"]) == set(m["chance_by_type"]) == set(m["accuracy_by_type"])
    assert sum(m["count_by_type"].values()) == results["num_answered"]
    assert all(0.25 <= c <= 0.5 for c in m["chance_by_type"].values())
    assert results["num_answered"] == results["num_questions"] > 0
    rows = [json.loads(line) for line in files.predictions.open()]
    assert len(rows) == results["num_questions"]
    assert {"id", "question", "reference", "prediction", "exact_match", "token_f1", "answer_nll"} <= set(rows[0])
    prof = json.loads(files.profiling.read_text())
    assert prof["timer"] == "perf_counter" and prof["peak_gpu_memory_bytes"] is None
    assert prof["total_wall_seconds"] > 0 and prof["generated_tokens_per_second"] > 0
    assert prof["batch_seconds"]["median"] <= prof["batch_seconds"]["p95"]
    assert not list(files.folder.glob(".*partial*"))


@pytest.mark.slow
def test_interrupted_evaluation_resumes_to_the_same_results_file(sample_dir, model_cache, tmp_path):
    """A baseline SIGKILLed after 3 batches, run again: it resumes from its log and writes the very file an
    uninterrupted run writes. 12-clip set, half held out: 6 clips, 18 questions, 9 batches of 2."""
    extra = ("data.eval_ids_file=null", "data.eval_fraction=0.5", "eval.batch_size=2", "eval.max_new_tokens=24")
    whole = tmp_path / "whole"
    res = ego_here("baseline", "--config", TINY, "--use-cpu", *tiny_sets(sample_dir, model_cache, whole, *extra))
    assert res.returncode == 0, res.stderr[-2000:]

    cut = tmp_path / "cut"
    files = RunFiles(cut).baseline()
    log = files.partial_log(0, 1)
    args = ["baseline", "--config", TINY, "--use-cpu", *tiny_sets(sample_dir, model_cache, cut, *extra)]
    proc = subprocess.Popen([EGO, *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 4:  # header + 3 batches
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not files.results.exists(), "evaluation finished before it could be interrupted"
    assert log.is_file()

    # Resumed by the next start of the same command (in this process: the killed one was a process of its own).
    res = ego_here(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming evaluation" in res.stdout
    assert files.results.read_bytes() == RunFiles(whole).baseline().results.read_bytes()
    assert not log.exists()


@pytest.mark.slow
def test_evaluate_a_trained_adapter(trained_qlora, sample40, model_cache, tmp_path):
    trained_files = RunFiles(trained_qlora)
    trained = json.loads(trained_files.training_results("qlora").read_text())
    assert trained["eval"]["num_items"] > 0 and "exact_match" in trained["eval"]
    adapter = trained_files.final_model("qlora")
    # As users run it (the installed script's end-to-end evaluate), on the questions train evaluated on.
    res = ego("evaluate", "--model", adapter, "--config", TINY, "--use-cpu",
              *tiny_sets(sample40, model_cache, tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(RunFiles(tmp_path).evaluate(str(adapter)).results.read_text())
    assert results["mode"] == "qlora" and results["model"] == str(adapter)
    # Same adapter, same questions: `train`'s own evaluation and `evaluate` agree.
    assert results["metrics"]["exact_match"] == trained["eval"]["exact_match"]
    assert results["metrics"]["answer_nll"] == pytest.approx(trained["eval"]["answer_nll"], rel=1e-5)
    missing = ego_here("evaluate", "--model", tmp_path / "nope", "--config", TINY, "--use-cpu",
                       "--set", f"output_dir={tmp_path / 'missing'}")
    assert missing.returncode == 1 and "adapter folder not found" in missing.stderr


def test_baseline_and_evaluate_refuse_deepspeed_in_one_line_before_any_run(fresh_store, tmp_path):
    from mlflow import MlflowClient

    for args in (["baseline"], ["evaluate", "--model", tmp_path]):
        res = ego_here(*args, "--config", TINY, "--deepspeed", REPO / "configs" / "deepspeed_zero3.json",
                       "--set", f"tracking.uri={fresh_store}", "--set", f"output_dir={tmp_path / 'out'}")
        assert res.returncode == 1, res.stderr
        assert "evaluation does not run under DeepSpeed; drop --deepspeed" in res.stderr
        assert "torchrun --nproc_per_node N" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    client = MlflowClient(fresh_store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments)  # refused before a run was started
