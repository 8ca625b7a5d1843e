"""M1: QLoRA (4-bit NF4 base + LoRA) or LoRA (bf16 base) fine-tuning on the HF Trainer, then its evaluation.

Recipe: preflight → MLflow run → data → model + LoRA → dataset → trainer → train (or resume) → final adapter
(atomic) → profile → the adapter on the held-out split, loaded back from disk as `evaluate --model` would →
results files → tracking and the registered model. Config keys that switch features:
  mode qlora|lora            quantization.* (4-bit type, double quant, compute dtype), lora.* (r, alpha, targets)
  --deepspeed PATH           ZeRO-2/3 from a JSON whose "auto" values come from training.*
  model.use_flash_attention  flash_attention_2 when flash-attn is importable on CUDA, else sdpa (said once)
  model.gradient_checkpointing, training.save_steps / save_total_limit, --resume
Files: see `app.run_files` (training/{mode}/..., profiling/{mode}_profiling.json, profiling/{mode}_eval_profiling.json).
Under `torchrun --nproc_per_node N` (one node or many) the same recipe runs on every rank: the Trainer
shards the data per rank and DeepSpeed the optimizer state; step losses and throughput are gathered over
ranks; the held-out evaluation is sharded like `baseline`; rank 0 alone writes files and talks to MLflow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from app import distributed
from app.config import Config
from app.console import console
from app.errors import UserError
from app.preflight import preflight
from app.run_files import RunFiles


def train(cfg: Config, mode: str = "qlora", deepspeed: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """One MLflow run around the whole recipe: it ends FINISHED, FAILED, or KILLED (Ctrl-C / SIGTERM)."""
    from app.quiet import quiet_third_party
    from app.tracking.run import mlflow_run

    ds = preflight(cfg, mode, deepspeed)  # a DeepSpeed JSON that cannot work is refused before any MLflow run
    quiet_third_party()
    with mlflow_run(cfg, mode, tags={"deepspeed": str(deepspeed) if deepspeed else "none"}):
        return _train(cfg, mode, deepspeed, ds, resume)


def _train(cfg: Config, mode: str, deepspeed: Path | None, ds: dict | None, resume: bool) -> dict[str, Any]:
    from transformers import PrinterCallback

    from app.console import silence_other_ranks
    from app.data.conversation import filter_too_long
    from app.data.dataset import VideoQADataset
    from app.data.ego4d import fingerprint
    from app.data.load import load_and_report
    from app.data.padding import PaddingCollator
    from app.evaluation.questions import TRAINING, decode_skips
    from app.io import write_json_atomic
    from app.models.loading import count_4bit_layers
    from app.models.setup import adapter_meta, load_for_training, on_cuda
    from app.profiler import Profiler
    from app.tracking import log as track
    from app.training.arguments import training_arguments
    from app.training.checkpoints import newest_checkpoint, save_final_adapter
    from app.training.deepspeed_json import zero_stage
    from app.training.hooks import ProfiledTrainer, ProfilerCallback, RichProgressCallback, device_summary

    silence_other_ranks()
    started = time.perf_counter()
    if ds is not None:
        distributed.single_process_rendezvous()
        # DeepSpeed compiles a communication op on first use; keep it in the project, not in ~.
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    files = RunFiles(cfg.output_dir)

    # 1. data
    report = load_and_report(cfg)
    track.set_tags({"dataset_fingerprint": fingerprint(report.records)})
    track.log_skipped(files.skipped(mode), report)  # now: a failed training still leaves it
    if not report.train:
        raise UserError(f"{cfg.data.data_path}: no usable training records (see the table above)")

    # 2. model: the base for `mode` with LoRA adapters
    model, processor, attn = load_for_training(cfg, mode, zero3=zero_stage(ds) == 3, say=console.print)
    cuda = on_cuda(cfg)
    quantized_layers = count_4bit_layers(model)  # what trained: > 0 is the proof a qlora run was 4-bit

    # 3. dataset: too-long samples are reported and skipped, never cut through their vision tokens
    records, too_long = filter_too_long(report.train, processor, cfg.data)
    for rid, length in too_long[:5]:
        console.print(f"[yellow]skipped {rid}: {length} tokens > data.max_seq_len={cfg.data.max_seq_len}[/]")
    if not records:
        raise UserError(f"every training record is longer than data.max_seq_len={cfg.data.max_seq_len}")
    dataset = VideoQADataset(records, cfg.data, processor)
    collator = PaddingCollator(pad_token_id=processor.tokenizer.pad_token_id)

    # 4. trainer
    profiler = Profiler(mode, use_cuda=cuda)
    trainer = ProfiledTrainer(
        model=model,
        args=training_arguments(cfg, files.checkpoints(mode), deepspeed, cuda),
        train_dataset=dataset,
        data_collator=collator,
        profiler=profiler,
    )
    trainer.remove_callback(PrinterCallback)  # the rich bar shows loss; no raw dicts on stdout
    trainer.add_callback(ProfilerCallback(trainer, on_step=track.log_step))
    trainer.add_callback(RichProgressCallback(trainer, console))

    # 5. train, or continue from the newest complete checkpoint
    resume_from = newest_checkpoint(files.checkpoints(mode)) if resume else None
    if resume and resume_from is None:
        console.print(f"--resume: no checkpoint under {files.checkpoints(mode)}; starting from step 0")
    elif resume_from is not None:
        console.print(f"resuming from {resume_from}")
    train_started = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:  # the batched step metrics reach the run even when it ends KILLED (SIGTERM) or FAILED
        track.log_step.flush()
    train_seconds = time.perf_counter() - train_started

    # 6. final adapter and profile. Collectives, so every rank takes part: the save (ZeRO-3 gathers the LoRA
    # weights), the profile's global totals and the dropped-sample count.
    final_dir = save_final_adapter(trainer, processor, files.final_model(mode), adapter_meta(cfg, mode))
    prof = profiler.report({"global_step": trainer.state.global_step, "optimizer_in_backward": ds is not None})
    dropped = int(distributed.all_reduce_sum([collator.dropped])[0])
    epochs, step_losses, global_step = trainer.epoch_losses(), trainer.step_losses, trainer.state.global_step
    del trainer, model
    if distributed.is_main():
        write_json_atomic(files.profiling(mode), prof)
        console.print(f"trained {global_step} steps in {train_seconds:.1f} s; "
                      "loss by epoch: " + ", ".join(f"{e['mean_loss']:.3f}" for e in epochs))
        track.log_summary(track.cost_metrics(prof, "train_cost/"))
        track.log_step_figures(prof, "step", [(s, v) for s, _, v in step_losses], "train")

    # 7. the adapter on the held-out split, once rank 0 has renamed it into place (every rank evaluates its share)
    distributed.barrier()
    evaluated, eval_cost = _evaluate_adapter(cfg, final_dir, report, mode, files)
    if not distributed.is_main():
        return {}

    # 8. results, tracking and the registered model
    results = {
        "mode": mode,
        "model": cfg.model.name_or_path,
        "attn_implementation": attn,
        "deepspeed": str(deepspeed) if deepspeed else None,
        "zero_stage": zero_stage(ds) if ds else None,
        "resumed_from": str(resume_from) if resume_from else None,
        "num_epochs": cfg.training.num_epochs,
        "global_step": global_step,
        "train_samples": len(records),
        "quantized_layers": quantized_layers,
        "skipped_too_long": [{"id": i, "tokens": n} for i, n in too_long],
        "dropped_undecodable": dropped,
        "epoch_losses": epochs,
        "step_losses": [{"step": s, "epoch": e + 1, "loss": v} for s, e, v in step_losses],
        "train_loss": output.training_loss,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
        "final_model": str(final_dir),
        "data": report.summary(),
        "dataset_fingerprint": fingerprint(report.records),
        "config_hash": cfg.config_hash(),
        "world_size": distributed.world_size(),
        **device_summary(),
        "eval": (evaluated or {}).get("metrics"),
        "eval_questions": {k: evaluated[k] for k in ("num_questions", "num_answered", "num_skipped",
                                                    "questions_hash")} if evaluated else None,
        "eval_cost": {k: eval_cost.get(k) for k in ("total_wall_seconds", "generated_tokens_per_second",
                                                    "samples_per_second", "batch_seconds")},
    }
    write_json_atomic(files.training_results(mode), results)
    eval_files = files.train_eval(mode)
    if evaluated:
        write_json_atomic(eval_files.profiling, eval_cost)
        track.log_evaluation(evaluated, eval_cost, eval_files.predictions)
    videos = {r.id: str(r.video) for r in report.train}
    track.log_skipped(files.skipped(mode), report, [
        {"id": i, "file": videos.get(i), "reason": f"{n} tokens > data.max_seq_len={cfg.data.max_seq_len}",
         "detail": None, "split": "train", "stage": TRAINING} for i, n in too_long] + decode_skips(evaluated or {}))
    track.log_config(cfg.to_dict())
    track.log_files(files.training_results(mode), files.profiling(mode), eval_files.profiling, eval_files.results)
    results["registered_model"] = track.register(final_dir, cfg, mode)
    if results["registered_model"]:
        reg = results["registered_model"]
        console.print(f"registered {reg['name']} version {reg['version']} (alias {reg['alias']})")
        write_json_atomic(files.training_results(mode), results)
    console.print(f"adapter: {final_dir}", highlight=False)
    return results


def _evaluate_adapter(cfg: Config, final_dir: Path, report, mode: str, files: RunFiles):
    """Step 7: the adapter just saved, loaded back from disk exactly as `evaluate --model` would."""
    import gc

    import torch

    # The Trainer left ZeRO-3 switched on process-wide: from_pretrained would shard the evaluation copy too.
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from app.evaluation.held_out import evaluate_held_out
    from app.evaluation.questions import loading_skips
    from app.models.setup import load_adapter, on_cuda

    unset_hf_deepspeed_config()
    if torch.cuda.is_available():  # free the training copy's GPU memory before the evaluation copy loads
        gc.collect()
        torch.cuda.empty_cache()
    if not report.eval:
        console.print("[yellow]no held-out records: the adapter was not evaluated[/]")
        return None, {}
    model, processor, _ = load_adapter(cfg, final_dir, say=console.print)
    return evaluate_held_out(cfg, model, processor, report.eval, str(final_dir), files.train_eval(mode), mode,
                             on_cuda(cfg), loading_skips(report, cfg.data.data_path))
