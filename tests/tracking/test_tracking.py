"""MLflow for real: a SQLite store, a `mlflow server` over HTTP on 127.0.0.1, run statuses, the registry.

The commands run in this process (`ego_here`) except where the process is what is tested (SIGTERM); the
`mlflow server` is always a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import EGO, REPO, TINY, ego_here, tiny_sets

from app.run_files import RunFiles

# sample_dir: 12 clips, 10 of them for training (2 held out, 6 questions: 2 each of colour, direction, shape).
TRAIN_CLIPS = 10
STEPS_PER_EPOCH = -(-TRAIN_CLIPS // 4)  # batch 4: 3 steps, the last one short


@pytest.fixture
def mlflow_server(fresh_store):
    """A real `mlflow server` on 127.0.0.1, its backend an already-migrated SQLite store (no 5 s migration)."""
    db = Path(fresh_store.removeprefix("sqlite:///"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", fresh_store,
         "--artifacts-destination", str(db.parent / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # No GenAI job runner (a third Python process, ~10 s to stop): a tracking server is all the CLI uses.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # its workers ignored the TERM: nothing of it is needed any more
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_pipeline_through_an_mlflow_server(mlflow_server, sample_dir, model_cache, tmp_path):
    """baseline → train (registers the adapter) → compare → evaluate models:/…@latest, all over HTTP.

    In this process (the server is the other end of every call); `training.dataloader_workers=0`: the loader's
    worker processes are not what this test is about, and an in-process run's persistent workers stall a later
    garbage collection of this process ~5 s each (torch's shutdown of a DataLoader the cycle collector frees
    times out per worker)."""
    from mlflow import MlflowClient

    uri = f"tracking.uri={mlflow_server}"
    out = tmp_path / "results"
    files = RunFiles(out)
    for args in (["baseline", "--use-cpu"], ["train", "--mode", "qlora", "--use-cpu"]):
        res = ego_here(*args, "--config", TINY, *tiny_sets(sample_dir, model_cache, out, uri, "training.num_epochs=2",
                                                           "training.dataloader_workers=0"))
        assert res.returncode == 0, res.stderr[-2000:]

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("ego4d-ft")
    runs = {r.data.tags["mode"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"baseline", "qlora"}
    qlora = runs["qlora"]
    assert qlora.info.status == "FINISHED" and runs["baseline"].info.status == "FINISHED"
    for tag in ("config_hash", "git_commit", "dataset_fingerprint", "model_name"):
        assert qlora.data.tags.get(tag), tag
    assert qlora.data.tags["dataset_fingerprint"] == runs["baseline"].data.tags["dataset_fingerprint"]
    assert qlora.data.params["training.num_epochs"] == "2" and qlora.data.params["lora.r"] == "16"
    steps = 2 * STEPS_PER_EPOCH  # every optimizer step of both epochs logged, once
    history = client.get_metric_history(qlora.info.run_id, "train/loss")
    assert len(history) == steps and sorted(m.step for m in history) == list(range(1, steps + 1))
    for key in ("train/step_seconds", "train/forward_seconds", "train/data_wait_seconds", "train/tokens_per_second"):
        assert len(client.get_metric_history(qlora.info.run_id, key)) == steps, key
    # The same evaluation and cost keys on both runs, so MLflow's compare view lines them up.
    shared = {k for k in runs["baseline"].data.metrics if k.startswith(("eval/", "eval_cost/"))}
    assert {"eval/exact_match", "eval/answer_nll", "eval/accuracy/color", "eval/count/color", "eval/chance/color",
            "eval_cost/batch_seconds/p95"} <= shared
    assert shared <= set(qlora.data.metrics)
    assert "train_cost/step_seconds/median" in qlora.data.metrics
    artifacts = {a.path for a in client.list_artifacts(qlora.info.run_id)}
    assert {"config.yaml", "training_results.json", "qlora_profiling.json", "predictions.json", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(qlora.info.run_id, "figures")}
    assert "figures/train_step_time_histogram.png" in figures and "figures/loss_curve.png" in figures

    version = client.get_model_version_by_alias("ego4d-llava-ov-qlora", "newest")
    assert version.run_id == qlora.info.run_id

    res = ego_here("compare", "--config", TINY, *tiny_sets(sample_dir, model_cache, out, uri))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (files.report_dir() / "report.md").is_file() and (files.report_dir() / "report.html").is_file()
    assert "held-out accuracy by question type" in res.stdout

    ref = "models:/ego4d-llava-ov-qlora@latest"
    res = ego_here("evaluate", "--model", ref, "--use-cpu", "--config", TINY,
                   *tiny_sets(sample_dir, model_cache, out, uri))
    assert res.returncode == 0, res.stderr[-2000:]
    evaluated = json.loads(files.evaluate(ref).results.read_text())["metrics"]
    trained = json.loads(files.training_results("qlora").read_text())["eval"]
    assert evaluated["exact_match"] == trained["exact_match"]
    assert evaluated["accuracy_by_type"] == trained["accuracy_by_type"]
    assert evaluated["answer_nll"] == pytest.approx(trained["answer_nll"], rel=1e-5)


def test_failed_run_ends_failed(sample_dir, model_cache, tmp_path, fresh_store):
    """A run that raises ends FAILED: read back from a store of this test's own, where it is the only run."""
    from mlflow import MlflowClient

    res = ego_here("train", "--mode", "qlora", "--use-cpu", "--config", TINY,
                   *tiny_sets(sample_dir, model_cache, tmp_path, f"data.data_path={tmp_path / 'missing.json'}",
                              f"tracking.uri={fresh_store}"))
    assert res.returncode == 1 and "missing.json" in res.stderr
    client = MlflowClient(fresh_store)
    (run,) = client.search_runs([client.get_experiment_by_name("ego4d-ft").experiment_id])
    assert run.data.tags["mode"] == "qlora" and run.info.status == "FAILED"


@pytest.mark.slow
def test_sigterm_ends_the_run_killed(sample_dir, model_cache, tmp_path, fresh_store):
    """SIGTERM (Slurm's preemption signal) to a training that has logged a step: exit 130, the run KILLED."""
    from mlflow import MlflowClient

    cmd = [EGO, "train", "--mode", "lora", "--use-cpu", "--config", str(TINY),
           *tiny_sets(sample_dir, model_cache, tmp_path / "out", "training.num_epochs=1000")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": fresh_store})
    client = MlflowClient(fresh_store)
    deadline = time.time() + 300
    run_id = None
    try:
        while time.time() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name("ego4d-ft")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
                run_id = runs[0].info.run_id
                break
            time.sleep(0.2)
        assert run_id, "training never logged a step"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "interrupted" in err
    assert client.get_run(run_id).info.status == "KILLED"
