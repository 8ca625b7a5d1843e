"""`ego4d-ft` with a SIGKILL planted at one moment of training, for the crash-safety tests.

Usage: EGO4D_TEST_KILL_AT=<moment> python kill_driver.py train ...   Moments:
  mid-step        after the forward pass of the 7th optimizer step, before its backward and update
  mid-checkpoint  inside the Trainer's save of checkpoint-8: weights and optimizer written, RNG and state not
  mid-final-save  inside the final adapter's save: weights written to the temp folder, processor files not
The kill is a real SIGKILL of this process: no handler, no cleanup, exactly what the OOM killer does.
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def plant(moment: str) -> None:
    from transformers import Trainer

    from app.models.llava_ov15 import LlavaOV15Processor
    from app.training.hooks import ProfiledTrainer

    if moment == "mid-step":
        forward = ProfiledTrainer.compute_loss

        def compute_loss(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            if self.state.global_step == 6:
                _die()
            return out

        ProfiledTrainer.compute_loss = compute_loss
    elif moment == "mid-checkpoint":
        save_rng = Trainer._save_rng_state

        def _save_rng_state(self, output_dir):
            if self.state.global_step == 8:
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


if __name__ == "__main__":
    plant(os.environ["EGO4D_TEST_KILL_AT"])
    from app.cli import app

    sys.argv = ["ego4d-ft", *sys.argv[1:]]
    app()
