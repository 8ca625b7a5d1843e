"""SIGKILL at three moments of training; `--resume` recovers each time and nothing half-written is visible.

The killed trainings are real processes, all forked from one driver (kill_driver.py --batch: one interpreter
start for the three, each kill at its own moment in a process of its own, each with its own output folder and
store); each resume runs in this process, as the same `train --resume` a user starts next (its process is not
what is tested)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY, ego, ego_here, tiny_sets

from app.run_files import RunFiles

DRIVER = Path(__file__).with_name("kill_driver.py")
STEPS = 6  # sample_dir: 10 training clips, batch 4 = 3 steps an epoch, 2 epochs; a checkpoint every 2 steps

# moment (kill_driver.py's) -> (checkpoint the resume must start from, what the killed process left behind)
MOMENTS = {
    "mid-step@3": ("checkpoint-2", lambda ckpts: not (ckpts / "checkpoint-4").exists()),
    "mid-checkpoint@4": ("checkpoint-2", lambda ckpts: (ckpts / "checkpoint-4").is_dir()
                         and not (ckpts / "checkpoint-4" / "trainer_state.json").exists()),
    "mid-final-save": (f"checkpoint-{STEPS}", lambda ckpts: (ckpts.parent / ".final_model.tmp").is_dir()),
}


@dataclass
class Killed:
    returncode: int
    stderr: str
    files: RunFiles
    store: str
    sets: list[str]


@pytest.fixture(scope="module")
def killed(sample_dir, model_cache, _store_template, tmp_path_factory) -> dict[str, Killed]:
    """Each moment's training, SIGKILLed there: its own output folder and its own (already migrated) store."""
    root = tmp_path_factory.mktemp("killed")
    jobs, runs = [], {}
    for i, moment in enumerate(MOMENTS):
        folder = root / str(i)
        (folder / "store").mkdir(parents=True)
        shutil.copy(_store_template, folder / "store" / "mlflow.db")
        store = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
        sets = tiny_sets(sample_dir, model_cache, folder / "out", "training.num_epochs=2", "training.save_steps=2",
                         "training.save_total_limit=3", "eval.max_samples=2", f"tracking.uri={store}")
        jobs.append({"moment": moment, "args": ["train", "--mode", "qlora", "--config", str(TINY), "--use-cpu", *sets],
                     "stdout": str(folder / "stdout.txt"), "stderr": str(folder / "stderr.txt")})
        runs[moment] = (folder, store, sets)
    (root / "jobs.json").write_text(json.dumps(jobs))
    res = ego("--batch", root / "jobs.json", launcher=[sys.executable, str(DRIVER)])
    assert res.returncode == 0, res.stderr[-3000:]
    codes = json.loads(res.stdout.strip().splitlines()[-1])
    return {moment: Killed(code, (folder / "stderr.txt").read_text(), RunFiles(folder / "out"), store, sets)
            for (moment, (folder, store, sets)), code in zip(runs.items(), codes, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_then_resume_recovers(moment, killed):
    from mlflow import MlflowClient

    run = killed[moment]
    files, sets = run.files, run.sets
    run_dir, ckpts = files.training_dir("qlora"), files.checkpoints("qlora")

    assert run.returncode == -9, run.stderr[-2000:]
    resume_from, left_behind = MOMENTS[moment]
    assert left_behind(ckpts), sorted(p.name for p in ckpts.iterdir())
    # Nothing half-written is visible under the names users and tools read.
    assert not files.final_model("qlora").exists()
    assert not files.training_results("qlora").exists()
    client = MlflowClient(run.store)
    exp = client.get_experiment_by_name("ego4d-ft")
    (orphan,) = client.search_runs([exp.experiment_id])
    assert orphan.info.status == "RUNNING"  # a SIGKILLed process cannot close its run

    # In this process: no DataLoader workers (the killed run had the default 2), whose persistent processes
    # would otherwise stall a later garbage collection of this test process.
    resumed = ego_here("train", "--mode", "qlora", "--config", TINY, "--use-cpu", *sets,
                       "--set", "training.dataloader_workers=0", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {ckpts / resume_from}" in resumed.stdout.replace("\n", "")
    results = json.loads(files.training_results("qlora").read_text())
    assert results["global_step"] == STEPS  # = an uninterrupted run
    final = files.final_model("qlora")
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
