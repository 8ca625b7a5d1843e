"""`ego4d-ft` with a SIGKILL planted at one moment of training, for the crash-safety tests.

Usage: EGO4D_TEST_KILL_AT=<moment>[@<step>] python kill_driver.py train ...   Moments:
  mid-step@N        after the forward pass of optimizer step N + 1 (global_step == N), before its backward and update
  mid-checkpoint@N  inside the Trainer's save of checkpoint-N: weights and optimizer written, RNG and state not
  mid-final-save    inside the final adapter's save: weights written to the temp folder, processor files not
The kill is a real SIGKILL of this process: no handler, no cleanup, exactly what the OOM killer does.

Several kills for the price of one interpreter start: `python kill_driver.py --batch JOBS.json`, JOBS a list of
{"moment", "args" (the ego4d-ft arguments), "stdout", "stderr" (files)}. The driver imports what training
imports once (torch, transformers, peft, mlflow: ~13 s), then forks one process per job, which plants its moment,
runs `ego4d-ft ARGS` with its output in the job's files and is SIGKILLed there. Nothing runs a torch operation
or starts a thread before the fork, so each child starts as clean as a new interpreter would. Prints the exit
codes as a JSON list (-9: killed as planned).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback

# What `train` imports on its way to the first step, loaded once before the forks (best effort: a module the app
# no longer has is simply imported by the child when it needs it).
PRELOAD = ("torch", "transformers", "peft", "mlflow", "app.cli", "app.pipelines.train", "app.tracking.run",
           "app.tracking.log", "app.models.setup", "app.models.loading", "app.data.load", "app.data.dataset",
           "app.data.padding", "app.training.hooks", "app.training.arguments", "app.training.checkpoints",
           "app.evaluation.held_out", "app.profiler")
CHILD_TIMEOUT_S = 600


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def plant(spec: str) -> None:
    from transformers import Trainer

    from app.models.llava_ov15 import LlavaOV15Processor
    from app.training.hooks import ProfiledTrainer

    moment, _, at = spec.partition("@")
    if moment in ("mid-step", "mid-checkpoint") and not at.isdigit():
        raise SystemExit(f"{moment} needs the step: {moment}@N")
    if moment == "mid-step":
        forward = ProfiledTrainer.compute_loss

        def compute_loss(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            if self.state.global_step == int(at):
                _die()
            return out

        ProfiledTrainer.compute_loss = compute_loss
    elif moment == "mid-checkpoint":
        save_rng = Trainer._save_rng_state

        def _save_rng_state(self, output_dir):
            if self.state.global_step == int(at):
                _die()
            return save_rng(self, output_dir)

        Trainer._save_rng_state = _save_rng_state
    elif moment == "mid-final-save":
        save = LlavaOV15Processor.save_pretrained

        def save_pretrained(self, path, *args, **kwargs):
            if ".final_model.tmp" in str(path):
                _die()
            return save(self, path, *args, **kwargs)

        LlavaOV15Processor.save_pretrained = save_pretrained
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def run_cli(args: list[str]) -> None:
    from app.cli import app

    sys.argv = ["ego4d-ft", *args]
    app()


def _child(job: dict) -> None:
    """In the forked process: never returns."""
    code = 1
    try:
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        plant(job["moment"])
        run_cli(job["args"])
        code = 0
    except SystemExit as exc:  # typer ends every command with one
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int) -> int:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return 124  # not the planted kill: the job hung
        time.sleep(0.1)


def batch(jobs_file: str) -> None:
    jobs = json.loads(open(jobs_file).read())
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    codes = []
    for job in jobs:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(job)
        codes.append(_wait(pid))
    print(json.dumps(codes))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--batch"]:
        batch(sys.argv[2])
    else:
        plant(os.environ["EGO4D_TEST_KILL_AT"])
        run_cli(sys.argv[1:])
