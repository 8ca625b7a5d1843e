"""Every training.* key reaches the Trainer's arguments, with the meaning the config documents."""

from __future__ import annotations

import math
from pathlib import Path

from app.config import load_config
from app.training.arguments import training_arguments

REPO = Path(__file__).resolve().parents[2]


def test_training_keys_reach_the_trainer(tmp_path):
    cfg = load_config(REPO / "configs" / "training_config.yaml", [
        "training.warmup_ratio=0.1", "training.learning_rate=0.0003", "training.num_epochs=3",
        "training.gradient_accumulation_steps=4", "training.per_device_batch_size=2", "training.seed=7",
        "training.dataloader_workers=0", "training.lr_scheduler=linear",
    ])
    args = training_arguments(cfg, tmp_path / "checkpoints", None, on_cuda=False)
    assert args.output_dir == str(tmp_path / "checkpoints")
    assert (args.learning_rate, args.num_train_epochs, args.gradient_accumulation_steps) == (3e-4, 3, 4)
    assert (args.per_device_train_batch_size, args.seed, args.data_seed) == (2, 7, 7)
    assert args.lr_scheduler_type == "linear" and args.use_cpu and not args.bf16
    assert args.optim == "adamw_torch"  # paged 8-bit AdamW needs CUDA: the same optimiser in full precision
    # warmup_ratio is a share of the steps, however many the run has.
    for steps in (10, 95, 1000):
        assert args.get_warmup_steps(steps) == math.ceil(0.1 * steps)
