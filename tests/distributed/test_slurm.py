"""The Slurm scripts on a real, throwaway single-node Slurm: munged + slurmctld + slurmd started here as root
from a config in a temp folder (two fake GPUs backed by /dev/null and /dev/zero, so `--gpus-per-node` is
granted on a CPU machine), `sbatch` of the unmodified scripts, then their logs, files and MLflow run.

Needs Debian's `slurm-wlm` and `munge` (`.ci/run` installs them) and root (slurmd launches jobs as any user).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import REPO, tiny_sets

from app.run_files import RunFiles

SLURM = REPO / "slurm"
SCRIPTS = ("run_training_baseline.slurm", "run_training_qlora.slurm", "run_training_qlora_multinode.slurm")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(pid_files: list[Path]) -> None:
    """End the daemons we started, by the pids they wrote: all signalled at once, then each waited for."""
    pids = []
    for pid_file in pid_files:
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        pids.append(pid)
    deadline = time.time() + 15
    for pid in pids:
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A one-node cluster private to this test module; yields the environment that talks to it."""
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/usr/bin"  # a non-root PATH often lacks sbin
    exe = {d: shutil.which(d, path=search) for d in DAEMONS}
    missing = [d for d, path in exe.items() if path is None]
    assert not missing, f"{missing} not installed: run .ci/run, or apt-get install slurm-wlm munge"
    assert os.geteuid() == 0, "starting slurmd needs root"
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir()
    (root / "munge").chmod(0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = root / "munge" / "munge.socket"
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    (root / "slurm.conf").write_text(f"""\
ClusterName=ego4dtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CryptoType=crypto/munge
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    # Slurm drops GPUs without a device file; any character device will do on a machine that has none.
    (root / "gres.conf").write_text("Name=gpu File=/dev/null\nName=gpu File=/dev/zero\n")
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "PATH": search}
    started: list[Path] = []
    try:
        subprocess.run([exe["munged"], "--force", f"--socket={sock}", f"--key-file={key}",
                        f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munge' / 'munged.pid'}",
                        f"--seed-file={root / 'munge' / 'seed'}"], check=True, env=env, timeout=30)
        started.append(root / "munge" / "munged.pid")
        subprocess.run([exe["slurmctld"], "-i"], check=True, env=env, timeout=30)
        started.append(root / "slurmctld.pid")
        subprocess.run([exe["slurmd"], "-N", node], check=True, env=env, timeout=30)
        started.append(root / "slurmd.pid")

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, timeout=10)
            return out.stdout.strip() == "idle"

        _wait(idle, f"node {node} to be idle (logs in {root / 'log'})")
        yield env
    finally:
        _stop(started[::-1])


def sbatch(env: dict[str, str], script: str, workdir: Path, *options: str, **variables: str) -> tuple[int, str]:
    """Submit an unmodified script from `workdir` (where its logs land), wait for it; (exit code, job id).

    Polls `scontrol show job` rather than `sbatch --wait`, whose back-off adds up to ~20 s per job.
    """
    res = subprocess.run(["sbatch", "--parsable", *options, str(SLURM / script)], capture_output=True, text=True,
                         cwd=workdir, env={**env, **variables}, timeout=60)
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip().split(";")[0]
    fields: dict[str, str] = {}

    def finished() -> bool:
        out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=env,
                             timeout=10).stdout
        fields.update(kv.split("=", 1) for kv in out.split() if "=" in kv)
        return fields.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

    _wait(finished, f"job {job}", timeout=600)
    return int(fields["ExitCode"].split(":")[0]), job


def tiny_args(sample: Path, cache: Path, out: Path, *extra: str) -> str:
    """EXTRA_ARGS for a script: the tiny run on `sample`, everything it writes under `out` and `cache`."""
    return " ".join(["--use-cpu", *tiny_sets(sample, cache, out, "training.num_epochs=1", "eval.batch_size=2", *extra)])


def _one_finished_run(out: Path, mode: str):
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("ego4d-ft")
    runs = client.search_runs([exp.experiment_id], filter_string=f"params.output_dir = '{out}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["mode"] == mode
    return runs[0]


def test_scripts_parse_and_every_tunable_has_a_default():
    for script in SCRIPTS:
        res = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        text = (SLURM / script).read_text()
        name = "baseline" if "baseline" in script else "qlora"
        assert f"#SBATCH --output=training_{name}_%j.out" in text and f"#SBATCH --error=training_{name}_%j.err" in text
        assert "MLFLOW_TRACKING_URI" in text and "torchrun" in text
    multinode = (SLURM / "run_training_qlora_multinode.slurm").read_text()
    assert "srun" in multinode and "--rdzv_backend=c10d" in multinode


@pytest.mark.slow
def test_multinode_script_trains_through_srun_and_c10d(slurm, sample_dir, model_cache, tmp_path):
    """srun + torchrun + c10d rendezvous on the first node (here the only one), 2 processes on 2 'GPUs'.
    sample_dir's 10 training clips in batches of 1: 5 steps on each rank, every clip seen once."""
    out = tmp_path / "results"
    rc, job = sbatch(slurm, "run_training_qlora_multinode.slurm", tmp_path,
                     "--nodes=1", "--gpus-per-node=2", f"--cpus-per-task={min(2, os.cpu_count() or 1)}",
                     PROJECT_DIR=str(REPO), CONFIG="configs/tiny_cpu.yaml", DEEPSPEED="configs/deepspeed_zero2.json",
                     RDZV_PORT=str(_free_port()),
                     EXTRA_ARGS=tiny_args(sample_dir, model_cache, out, "training.per_device_batch_size=1"))
    log, err = tmp_path / f"training_qlora_{job}.out", tmp_path / f"training_qlora_{job}.err"
    assert log.is_file() and err.is_file(), list(tmp_path.iterdir())
    assert rc == 0, err.read_text()[-3000:]
    assert f"job {job}: 1 nodes x 2 processes" in log.read_text()  # NPROC_PER_NODE came from the GPUs granted
    files = RunFiles(out)
    results = json.loads(files.training_results("qlora").read_text())
    assert results["world_size"] == 2 and results["zero_stage"] == 2 and results["global_step"] == 5
    prof = json.loads(files.profiling("qlora").read_text())
    assert prof["world_size"] == 2 and prof["num_samples"] == 10 and prof["tokens_per_second"] > 0
    assert (files.final_model("qlora") / "adapter_model.safetensors").is_file()
    run = _one_finished_run(out, "qlora")  # the tracking URI reached rank 0 through sbatch, srun and torchrun
    assert run.data.metrics["train_cost/tokens_per_second"] > 0


@pytest.mark.slow
def test_baseline_script_shards_over_the_node_gpus(slurm, sample_dir, model_cache, tmp_path):
    out = tmp_path / "results"
    rc, job = sbatch(slurm, "run_training_baseline.slurm", tmp_path,
                     "--gpus-per-node=2", f"--cpus-per-task={min(2, os.cpu_count() or 1)}",
                     PROJECT_DIR=str(REPO), CONFIG="configs/tiny_cpu.yaml",
                     EXTRA_ARGS=tiny_args(sample_dir, model_cache, out))
    err = tmp_path / f"training_baseline_{job}.err"
    assert rc == 0, err.read_text()[-3000:] if err.is_file() else list(tmp_path.iterdir())
    assert "2 processes, baseline" in (tmp_path / f"training_baseline_{job}.out").read_text()
    files = RunFiles(out)
    results = json.loads(files.baseline().results.read_text())
    assert results["num_answered"] == results["num_questions"] > 0
    assert json.loads(files.baseline().profiling.read_text())["world_size"] == 2
    _one_finished_run(out, "baseline")
