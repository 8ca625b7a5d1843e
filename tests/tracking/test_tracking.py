"""MLflow for real: a SQLite store, a `mlflow server` over HTTP on 127.0.0.1, run statuses, the registry."""

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
from cli_helpers import tiny_sets

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"
EGO = str(Path(sys.executable).parent / "ego4d-ft")


def ego(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([EGO, *args, "--config", str(TINY)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not start")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_pipeline_through_an_mlflow_server(mlflow_server, sample40, model_cache, tmp_path):
    """baseline → train (registers the adapter) → compare → evaluate models:/…@latest, all over HTTP."""
    from mlflow import MlflowClient

    uri = f"tracking.uri={mlflow_server}"
    out = tmp_path / "results"
    for args in (["baseline", "--use-cpu"], ["train", "--mode", "qlora", "--use-cpu"]):
        res = ego(*args, *tiny_sets(sample40, model_cache, out, uri, "training.num_epochs=2"))
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
    history = client.get_metric_history(qlora.info.run_id, "train/loss")
    assert len(history) == 16 and sorted(m.step for m in history) == list(range(1, 17))
    for key in ("train/step_seconds", "train/forward_seconds", "train/data_wait_seconds", "train/tokens_per_second"):
        assert len(client.get_metric_history(qlora.info.run_id, key)) == 16, key
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

    res = ego("compare", *tiny_sets(sample40, model_cache, out, uri))
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()
    assert "held-out accuracy by question type" in res.stdout

    res = ego("evaluate", "--model", "models:/ego4d-llava-ov-qlora@latest", "--use-cpu",
              *tiny_sets(sample40, model_cache, out, uri))
    assert res.returncode == 0, res.stderr[-2000:]
    evaluated = json.loads(next((out / "evaluate").glob("*/evaluate_results.json")).read_text())["metrics"]
    trained = json.loads((out / "training" / "qlora" / "training_results.json").read_text())["eval"]
    assert evaluated["exact_match"] == trained["exact_match"]
    assert evaluated["accuracy_by_type"] == trained["accuracy_by_type"]
    assert evaluated["answer_nll"] == pytest.approx(trained["answer_nll"], rel=1e-5)


def test_failed_run_ends_failed(sample40, model_cache, tmp_path, tracking_store):
    from mlflow import MlflowClient

    res = ego("train", "--mode", "qlora", "--use-cpu",
              *tiny_sets(sample40, model_cache, tmp_path, f"data.data_path={tmp_path / 'missing.json'}"))
    assert res.returncode == 1 and "missing.json" in res.stderr
    client = MlflowClient(tracking_store)
    exp = client.get_experiment_by_name("ego4d-ft")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.mode = 'qlora'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED"


@pytest.mark.slow
def test_sigterm_ends_the_run_killed(sample40, model_cache, tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'term.db'}"
    cmd = [EGO, "train", "--mode", "lora", "--use-cpu", "--config", str(TINY),
           *tiny_sets(sample40, model_cache, tmp_path / "out", "training.num_epochs=200")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": store})
    client = MlflowClient(store)
    deadline = time.time() + 300
    run_id = None
    while time.time() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("ego4d-ft") if Path(tmp_path / "term.db").exists() else None
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
            run_id = runs[0].info.run_id
            break
        time.sleep(0.5)
    assert run_id, "training never logged a step"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    assert client.get_run(run_id).info.status == "KILLED"
