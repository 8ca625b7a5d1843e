"""HF Trainer, measured: the profiler's regions around data, forward, backward and optimizer, and a rich
progress bar. The training loop itself stays the Trainer's.

Regions per optimizer step (gradient accumulation folds micro-batches into one step):
  data_wait  fetching the step's batches from the DataLoader (`get_batch_samples`)
  forward    `compute_loss`, summed over micro-batches
  backward   `training_step` minus its forward, summed (under DeepSpeed this includes the engine's
             optimizer step, which accelerate runs inside `backward`)
  optimizer  gradient clipping, `optimizer.step()`, the LR schedule and `zero_grad` (to `on_step_end`)
  step       from the start of the data fetch to `on_step_end`
Under torchrun the per-step loss handed to the tracker is the mean over ranks, tokens/s global (summed).
"""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import Trainer, TrainerCallback

from app import distributed
from app.console import console as default_console
from app.profiler import Profiler


class ProfiledTrainer(Trainer):
    def __init__(self, *args, profiler: Profiler, **kwargs):
        super().__init__(*args, **kwargs)
        self.profiler = profiler
        self.step_losses: list[tuple[int, int, float]] = []  # (global step, epoch index, loss)
        self._step_loss = 0.0

    def epoch_losses(self) -> list[dict[str, Any]]:
        by_epoch: dict[int, list[float]] = {}
        for _, epoch, loss in self.step_losses:
            by_epoch.setdefault(epoch, []).append(loss)
        return [{"epoch": e + 1, "mean_loss": sum(v) / len(v), "steps": len(v)} for e, v in sorted(by_epoch.items())]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        self.profiler.timer.start("step")
        self.profiler.timer.start("data_wait")
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        # A batch whose every clip failed to decode comes back as None (the collator counted it).
        batches = [b for b in batches if b is not None]
        self.profiler.timer.stop("data_wait")
        for batch in batches:
            self.profiler.count_batch(batch)
        return batches, num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.profiler.timer.start("forward")
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.profiler.timer.stop("forward")
        return out

    def floating_point_ops(self, inputs) -> int:
        # The Trainer recounts every parameter on each step for this estimate; count once.
        if not hasattr(self, "_flop_params"):
            self._flop_params = self.model.num_parameters(exclude_embeddings=True)
        ids = inputs.get("input_ids")
        return 6 * ids.numel() * self._flop_params if ids is not None else 0

    def _clip_grad_norm(self, model):
        # The optimizer region starts at gradient clipping: it is part of taking the step.
        self.profiler.timer.start("optimizer")
        return super()._clip_grad_norm(model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        inputs.pop("index", None)  # the collator's bookkeeping, not a model input
        self.profiler.timer.start("forward_backward")
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.profiler.timer.stop("forward_backward")
        self._step_loss += float(loss)
        return loss

    def take_step_loss(self) -> float:
        loss, self._step_loss = self._step_loss, 0.0
        return loss


class ProfilerCallback(TrainerCallback):
    """Closes each step in the profiler and keeps the per-step loss with its epoch."""

    def __init__(self, trainer: ProfiledTrainer, on_step: Any = None):
        self.trainer = trainer
        self.on_step = on_step  # called with (global_step, figures) — the tracker's hook
        self.epoch_index = 0

    @property
    def profiler(self) -> Profiler:
        return self.trainer.profiler

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch_index = int(state.epoch or 0)
        self.profiler.epoch_begin()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.profiler.epoch_end()

    def on_train_end(self, args, state, control, **kwargs):
        flush = getattr(self.on_step, "flush", None)  # a batching tracker holds the last steps' metrics
        if flush:
            flush()
        # Persistent loader workers outlive training inside the Trainer's reference cycles; when the garbage
        # collector frees them later, each one's shutdown times out (5 s a worker, measured), stalling whatever
        # runs then (the adapter's evaluation). Stop them now. `_iterator` is torch's DataLoader's own handle.
        iterator = getattr(kwargs.get("train_dataloader"), "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.profiler.timer.is_open("optimizer"):  # no clipping (max_grad_norm=0)
            self.profiler.timer.start("optimizer")

    def on_step_end(self, args, state, control, **kwargs):
        self.profiler.timer.stop("optimizer")
        self.profiler.timer.stop("step")
        regions = self.profiler.step_end()
        # Every rank reaches on_step_end once per optimizer step, so this small gather cannot hang. Under
        # torchrun the step's loss is the mean over ranks, its tokens the sum, its time the slowest rank's.
        per_rank = distributed.all_gather_objects(
            (self.trainer.take_step_loss(), self.profiler.tokens[-1], regions.get("step", 0.0))
        )
        loss = sum(r[0] for r in per_rank) / len(per_rank)
        tokens, step_s = sum(r[1] for r in per_rank), max(r[2] for r in per_rank)
        self.trainer.step_losses.append((state.global_step, self.epoch_index, loss))
        figures = {
            "loss": loss,
            "learning_rate": self.trainer._get_learning_rate() if self.trainer.lr_scheduler else None,
            "step_seconds": step_s,
            "tokens_per_second": tokens / step_s if step_s else None,
            **{f"{k}_seconds": self.profiler.steps[k][-1] for k in ("forward", "backward", "optimizer", "data_wait")},
        }
        if self.on_step:
            self.on_step(state.global_step, figures)


class RichProgressCallback(TrainerCallback):
    """One bar over optimizer steps with loss, step time and ETA; only the main process draws it."""

    def __init__(self, trainer: ProfiledTrainer, console: Console | None = None):
        self.trainer = trainer
        self.console = console or default_console
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]}  {task.fields[step_s]} s/step"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, epoch=0.0, loss="-", step_s="-"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None or not self.trainer.step_losses:
            return
        loss = self.trainer.step_losses[-1][2]
        step_s = self.trainer.profiler.steps["step"][-1]
        self.progress.update(
            self.task, completed=state.global_step, epoch=state.epoch or 0.0, loss=f"{loss:.4f}", step_s=f"{step_s:.3f}"
        )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def device_summary() -> dict[str, Any]:
    if torch.cuda.is_available():
        return {"device": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
    return {"device": "cpu", "threads": torch.get_num_threads()}
