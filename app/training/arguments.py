"""The HF `TrainingArguments` of a run, from the config: every training.* key lands here."""

from __future__ import annotations

from pathlib import Path

from app.config import Config


def training_arguments(cfg: Config, checkpoints: Path, deepspeed: Path | None, on_cuda: bool):
    from transformers import TrainingArguments

    t = cfg.training
    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=t.num_epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        # transformers 5 reads a warmup_steps float in [0, 1) as a share of the total steps (its documented
        # replacement for warmup_ratio): ceil(ratio x steps) warmup steps, as warmup_ratio gave.
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        # bitsandbytes' 8-bit optimizers need CUDA; on CPU the same AdamW in full precision.
        optim=t.optimizer if on_cuda or "8bit" not in t.optimizer else "adamw_torch",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=t.dataloader_workers,
        dataloader_persistent_workers=t.dataloader_workers > 0,
        dataloader_prefetch_factor=t.dataloader_prefetch if t.dataloader_workers > 0 else None,
        dataloader_pin_memory=on_cuda,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=not on_cuda,
        bf16=on_cuda and cfg.quantization.compute_dtype == "bfloat16",
        seed=t.seed,
        data_seed=t.seed,
        deepspeed=str(deepspeed) if deepspeed else None,
        gradient_checkpointing=False,  # attach_lora already set it up the PEFT-compatible way
        save_only_model=False,
    )
