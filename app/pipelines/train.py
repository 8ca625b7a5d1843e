"""M1: QLoRA (4-bit NF4 base + LoRA) or LoRA (bf16 base) fine-tuning on the HF Trainer.

Reads top to bottom: check the combination → data → model → dataset → trainer → train (or resume) →
final adapter (atomic) → results and profiling JSON. Config keys that switch features:
  mode qlora|lora            quantization.* (NF4, double quant, compute dtype), lora.* (r, alpha, targets)
  --deepspeed PATH           ZeRO-2/3 from a JSON whose "auto" values come from training.*
  model.use_flash_attention  flash_attention_2 when flash-attn is importable on CUDA, else sdpa (said once)
  model.gradient_checkpointing, training.save_steps / save_total_limit, --resume
Files (under output_dir): training/{mode}/final_model/, training/{mode}/training_results.json,
profiling/{mode}_profiling.json; checkpoints in training/{mode}/checkpoints/.
Under `torchrun --nproc_per_node N` (one node or many) the same recipe runs on every rank: the Trainer
shards the data per rank and DeepSpeed the optimizer state; step losses and throughput are gathered over
ranks; the held-out evaluation is sharded like `baseline`; rank 0 alone writes files and talks to MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from app.config import Config
from app.errors import UserError
from app.models.setup import model_path
from app.pipelines.preflight import preflight
from app.training import distributed

console = Console()
MODES = ("qlora", "lora")


# --- checks that must fail before any weight is read -------------------------------------------------------------
def read_deepspeed(path: Path | None) -> dict | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"{path}: DeepSpeed config not found")
    try:
        ds = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(ds, dict):
        raise UserError(f"{path}: expected a JSON object")
    return ds


def check_combination(cfg: Config, mode: str, ds: dict | None, ds_path: Path | None) -> None:
    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if ds is None:
        return
    zero = ds.get("zero_optimization", {}) or {}
    stage = int(zero.get("stage", 0))
    if mode == "qlora" and stage == 3 and (zero.get("offload_param") or {}).get("device", "none") != "none":
        # bitsandbytes' packed 4-bit weights cannot be partitioned to CPU/NVMe by ZeRO-3's parameter offload.
        raise UserError(f"{ds_path}: QLoRA cannot use zero_optimization.offload_param; remove it or use --mode lora")
    if cfg.use_cpu and ds.get("fp16", {}).get("enabled") is True:
        raise UserError(f"{ds_path}: fp16.enabled=true needs a GPU; set it to \"auto\" or false for --use-cpu")


def _distributed_defaults() -> None:
    """A single process still needs a rendezvous for DeepSpeed; torchrun sets these when it launches us."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


# --- components ----------------------------------------------------------------------------------------------------
def _on_cuda(cfg: Config) -> bool:
    import torch

    return torch.cuda.is_available() and not cfg.use_cpu


def setup_model(cfg: Config, mode: str, ds: dict | None):
    import torch

    from app.models.loading import attach_lora, load_model_and_processor
    from app.models.setup import attention_implementation

    on_cuda = _on_cuda(cfg)
    attn, note = attention_implementation(cfg.model, on_cuda)
    if note:
        console.print(note)
    zero3 = ds is not None and int((ds.get("zero_optimization") or {}).get("stage", 0)) == 3
    # bf16 matmuls are slow on CPU: LoRA's base goes fp32 there.
    torch_dtype = cfg.model.torch_dtype if on_cuda else "float32"
    device_map = None if zero3 or not on_cuda else {"": int(os.environ.get("LOCAL_RANK", 0))}
    model, processor = load_model_and_processor(
        model_path(cfg.model),
        family=cfg.model.family,
        mode=mode,
        torch_dtype=torch_dtype,
        attn_implementation=attn,
        compute_dtype=cfg.quantization.compute_dtype,
        quant_storage=cfg.quantization.compute_dtype if (zero3 and mode == "qlora") else None,
        device_map=device_map,
        trust_remote_code=cfg.model.trust_remote_code,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    model = attach_lora(
        model,
        mode,
        r=cfg.lora.r,
        alpha=cfg.lora.alpha,
        dropout=cfg.lora.dropout,
        train_merger=cfg.lora.train_merger,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        projections=cfg.lora.target_modules,
        train_lm_head=cfg.lora.train_lm_head,
    )
    from app.models.inspect import logical_numel

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(logical_numel(p) for p in model.parameters())  # the model's parameters, not 4-bit bytes
    console.print(f"model: {cfg.model.name_or_path} ({mode}, attention {attn}); trainable {trainable:,} of {total:,}")
    del torch
    return model, processor, attn


def training_arguments(cfg: Config, mode: str, run_dir: Path, ds_path: Path | None, on_cuda: bool):
    from transformers import TrainingArguments

    t = cfg.training
    bf16 = on_cuda and cfg.quantization.compute_dtype == "bfloat16"
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=t.num_epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
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
        bf16=bf16,
        seed=t.seed,
        data_seed=t.seed,
        deepspeed=str(ds_path) if ds_path else None,
        gradient_checkpointing=False,  # attach_lora already set it up the PEFT-compatible way
        save_only_model=False,
    )


def checkpoint_complete(folder: Path) -> bool:
    """The Trainer writes a checkpoint in place (weights, optimizer, RNG, then trainer_state.json last and not
    atomically): complete means that last file parses and weights are there. A process killed mid-save leaves
    a folder that fails this."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and "global_step" in state and any(folder.glob("*.safetensors"))


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones (a kill during their save) are removed, said once each."""
    def step(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    steps = sorted((p for p in folder.glob("checkpoint-*") if step(p) >= 0), key=step)
    done = [p for p in steps if checkpoint_complete(p)]
    for p in steps:
        if p not in done:
            console.print(f"[yellow]removing incomplete checkpoint {p} (its save was interrupted)[/]", highlight=False)
            shutil.rmtree(p, ignore_errors=True)
    return done[-1] if done else None


def save_final_adapter(trainer, processor, final_dir: Path, meta: dict[str, Any]) -> Path:
    """Write beside, then rename: a reader sees the old adapter or the new one, never half of one.

    Every rank calls this: under ZeRO-3 the Trainer gathers the sharded LoRA weights collectively; only
    the main process writes and renames.
    """
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if not trainer.is_world_process_zero():
        return final_dir
    processor.save_pretrained(tmp)
    (tmp / "ego4d_ft.json").write_text(json.dumps(meta, indent=2) + "\n")  # how to load it back
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing of ours reads it
    old = final_dir.with_name(f".{final_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp, final_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final_dir


def epoch_losses(step_losses: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    by_epoch: dict[int, list[float]] = {}
    for _, epoch, loss in step_losses:
        by_epoch.setdefault(epoch, []).append(loss)
    return [{"epoch": e + 1, "mean_loss": sum(v) / len(v), "steps": len(v)} for e, v in sorted(by_epoch.items())]


# --- the recipe ------------------------------------------------------------------------------------------------------
def train(cfg: Config, mode: str = "qlora", deepspeed: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """One MLflow run around the whole recipe: it ends FINISHED, FAILED, or KILLED (Ctrl-C / SIGTERM)."""
    from app.quiet import quiet_third_party
    from app.tracking.run import mlflow_run

    if mode not in MODES:
        raise UserError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    # A DeepSpeed JSON that cannot work is refused before any import or MLflow run: no FAILED run is left.
    ds = read_deepspeed(deepspeed)
    check_combination(cfg, mode, ds, deepspeed)
    preflight(cfg)
    quiet_third_party()
    with mlflow_run(cfg, mode, tags={"deepspeed": str(deepspeed) if deepspeed else "none"}):
        return _train(cfg, mode, deepspeed, ds, resume)


def _train(cfg: Config, mode: str, deepspeed: Path | None, ds: dict | None, resume: bool) -> dict[str, Any]:
    from transformers import PrinterCallback

    from app.data.collate import TrainCollator, VideoQADataset, filter_too_long
    from app.data.ego4d import fingerprint
    from app.evaluation.questions import TRAINING, decode_skips
    from app.pipelines import data as data_pipeline
    from app.pipelines.data import load_and_report
    from app.pipelines.evaluate import evaluate_trained
    from app.tracking import log as track
    from app.training.hooks import ProfiledTrainer, ProfilerCallback, RichProgressCallback, device_summary
    from app.training.profiler import Profiler, write_json_atomic

    distributed.silence_other_ranks(console, data_pipeline.console)
    started = time.perf_counter()
    if ds is not None:
        _distributed_defaults()
        # DeepSpeed compiles a communication op on first use; keep it in the project, not in ~.
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    out = Path(cfg.output_dir)
    run_dir = out / "training" / mode

    # 1. data
    report = load_and_report(cfg)
    track.set_tags({"dataset_fingerprint": fingerprint(report.records)})
    track.log_skipped(run_dir / "skipped_records.json", report)  # now: a failed training still leaves it
    if not report.train:
        raise UserError(f"{cfg.data.data_path}: no usable training records (see the table above)")

    # 2. model
    model, processor, attn = setup_model(cfg, mode, ds)
    on_cuda = _on_cuda(cfg)

    # 3. dataset: too-long samples are reported and skipped, never cut through their vision tokens
    records, too_long = filter_too_long(report.train, processor, cfg.data)
    for rid, length in too_long[:5]:
        console.print(f"[yellow]skipped {rid}: {length} tokens > data.max_seq_len={cfg.data.max_seq_len}[/]")
    if not records:
        raise UserError(f"every training record is longer than data.max_seq_len={cfg.data.max_seq_len}")
    dataset = VideoQADataset(records, cfg.data, processor)
    collator = TrainCollator(pad_token_id=processor.tokenizer.pad_token_id)

    # 4. trainer
    profiler = Profiler(mode, use_cuda=on_cuda)
    trainer = ProfiledTrainer(
        model=model,
        args=training_arguments(cfg, mode, run_dir, deepspeed, on_cuda),
        train_dataset=dataset,
        data_collator=collator,
        profiler=profiler,
    )
    trainer.remove_callback(PrinterCallback)  # the rich bar shows loss; no raw dicts on stdout
    trainer.add_callback(ProfilerCallback(trainer, on_step=track.log_step))
    trainer.add_callback(RichProgressCallback(trainer, console))

    # 5. train, or continue from the newest complete checkpoint
    resume_from = newest_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and resume_from is None:
        console.print(f"--resume: no checkpoint under {run_dir / 'checkpoints'}; starting from step 0")
    elif resume_from is not None:
        console.print(f"resuming from {resume_from}")
    train_started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - train_started

    # 6. final adapter and results (rank 0 writes; the others only trained)
    meta = {"mode": mode, "base_model": str(Path(model_path(cfg.model)).resolve()) if cfg.model.tiny
            else cfg.model.name_or_path, "family": cfg.model.family, "config_hash": cfg.config_hash()}
    final_dir = save_final_adapter(trainer, processor, run_dir / "final_model", meta)
    # Collectives, so every rank takes part: the profile's global totals, then (once rank 0 has renamed the
    # adapter into place) the sharded evaluation of it.
    prof = profiler.report({"global_step": trainer.state.global_step, "optimizer_in_backward": ds is not None})
    dropped = int(distributed.all_reduce_sum([collator.dropped])[0])
    distributed.barrier()
    if not trainer.is_world_process_zero():
        del trainer, model
        evaluate_trained(cfg, final_dir, report, mode, run_dir)
        return {}
    epochs = epoch_losses(trainer.step_losses)
    results = {
        "mode": mode,
        "model": cfg.model.name_or_path,
        "attn_implementation": attn,
        "deepspeed": str(deepspeed) if deepspeed else None,
        "zero_stage": int((ds or {}).get("zero_optimization", {}).get("stage", 0)) if ds else None,
        "resumed_from": str(resume_from) if resume_from else None,
        "num_epochs": cfg.training.num_epochs,
        "global_step": trainer.state.global_step,
        "train_samples": len(records),
        "skipped_too_long": [{"id": i, "tokens": n} for i, n in too_long],
        "dropped_undecodable": dropped,
        "epoch_losses": epochs,
        "step_losses": [{"step": s, "epoch": e + 1, "loss": v} for s, e, v in trainer.step_losses],
        "train_loss": output.training_loss,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - started,
        "final_model": str(final_dir),
        "data": report.summary(),
        "dataset_fingerprint": fingerprint(report.records),
        "config_hash": cfg.config_hash(),
        "world_size": distributed.world_size(),
        **device_summary(),
    }
    write_json_atomic(out / "profiling" / f"{mode}_profiling.json", prof)
    console.print(
        f"trained {trainer.state.global_step} steps in {train_seconds:.1f} s; "
        "loss by epoch: " + ", ".join(f"{e['mean_loss']:.3f}" for e in epochs)
    )
    losses = [(s, v) for s, _, v in trainer.step_losses]
    track.log_summary(track.cost_metrics(prof, "train_cost/"))
    track.log_step_figures(prof, "step", losses, "train")

    # 7. the adapter on the held-out split, loaded back from disk exactly as `evaluate --model` would
    del trainer, model
    evaluated, eval_cost = evaluate_trained(cfg, final_dir, report, mode, run_dir)
    results["eval"] = (evaluated or {}).get("metrics")
    results["eval_questions"] = {k: evaluated[k] for k in ("num_questions", "num_answered", "num_skipped",
                                                          "questions_hash")} if evaluated else None
    results["eval_cost"] = {k: eval_cost.get(k) for k in ("total_wall_seconds", "generated_tokens_per_second",
                                                          "samples_per_second", "batch_seconds")}
    write_json_atomic(run_dir / "training_results.json", results)
    if results["eval"]:
        write_json_atomic(out / "profiling" / f"{mode}_eval_profiling.json", eval_cost)
        track.log_summary({**track.eval_metrics(results["eval"]), **track.cost_metrics(eval_cost, "eval_cost/")})
        track.set_tags(track.eval_question_tags(evaluated))
        track.log_step_figures(eval_cost, "batch", None, "eval")
        track.log_predictions(run_dir / "eval_predictions.jsonl")
    videos = {r.id: str(r.video) for r in report.train}
    track.log_skipped(run_dir / "skipped_records.json", report, [
        {"id": i, "file": videos.get(i), "reason": f"{n} tokens > data.max_seq_len={cfg.data.max_seq_len}",
         "detail": None, "split": "train", "stage": TRAINING} for i, n in too_long] + decode_skips(evaluated or {}))
    track.log_config(cfg.to_dict())
    track.log_files(run_dir / "training_results.json", out / "profiling" / f"{mode}_profiling.json",
                    out / "profiling" / f"{mode}_eval_profiling.json", run_dir / "eval_results.json")
    results["registered_model"] = track.register(final_dir, cfg, mode)
    if results["registered_model"]:
        reg = results["registered_model"]
        console.print(f"registered {reg['name']} version {reg['version']} (alias {reg['alias']})")
        write_json_atomic(run_dir / "training_results.json", results)
    console.print(f"adapter: {final_dir}", highlight=False)
    return results
