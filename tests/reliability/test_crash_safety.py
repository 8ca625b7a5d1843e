"""SIGKILL at three moments of training; `--resume` recovers each time and nothing half-written is visible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import tiny_sets

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"
EGO = str(Path(sys.executable).parent / "ego4d-ft")
DRIVER = Path(__file__).with_name("kill_driver.py")
STEPS = 16  # 32 training clips, batch 4, 2 epochs


def _run(prefix: list[str], sets: list[str], env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*prefix, "train", "--mode", "qlora", "--config", str(TINY), "--use-cpu", *sets, *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


# moment -> (checkpoint the resume must start from, what the killed process left behind)
MOMENTS = {
    "mid-step": ("checkpoint-4", lambda ckpts: not (ckpts / "checkpoint-8").exists()),
    "mid-checkpoint": ("checkpoint-4", lambda ckpts: (ckpts / "checkpoint-8").is_dir()
                       and not (ckpts / "checkpoint-8" / "trainer_state.json").exists()),
    "mid-final-save": (f"checkpoint-{STEPS}", lambda ckpts: (ckpts.parent / ".final_model.tmp").is_dir()),
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_resume_recovers(moment, sample40, model_cache, tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'crash.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "COLUMNS": "200", "EGO4D_TEST_KILL_AT": moment}
    sets = tiny_sets(sample40, model_cache, tmp_path / "out", "training.num_epochs=2", "training.save_steps=4",
                     "training.save_total_limit=3", "eval.max_samples=4")
    run_dir = tmp_path / "out" / "training" / "qlora"
    ckpts = run_dir / "checkpoints"

    killed = _run([sys.executable, str(DRIVER)], sets, env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resume_from, left_behind = MOMENTS[moment]
    assert left_behind(ckpts), sorted(p.name for p in ckpts.iterdir())
    # Nothing half-written is visible under the names users and tools read.
    assert not (run_dir / "final_model").exists()
    assert not (run_dir / "training_results.json").exists()
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("ego4d-ft")
    (orphan,) = client.search_runs([exp.experiment_id])
    assert orphan.info.status == "RUNNING"  # a SIGKILLed process cannot close its run

    env.pop("EGO4D_TEST_KILL_AT")
    resumed = _run([EGO], sets, env, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {ckpts / resume_from}" in resumed.stdout.replace("\n", "")
    results = json.loads((run_dir / "training_results.json").read_text())
    assert results["global_step"] == STEPS  # = an uninterrupted run
    final = run_dir / "final_model"
    assert {"adapter_model.safetensors", "adapter_config.json", "ego4d_ft.json", "tokenizer.json"} <= {
        p.name for p in final.iterdir()}
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(final / "adapter_model.safetensors").values())
    assert not list(run_dir.glob(".final_model*")) and not list(ckpts.glob("*/.*tmp*"))
    # The next start closed the orphan as KILLED and said so; the resumed run finished.
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert f"closed run {orphan.info.run_id} as KILLED" in resumed.stderr
    statuses = sorted(r.info.status for r in client.search_runs([exp.experiment_id]))
    assert statuses == ["FINISHED", "KILLED"]
