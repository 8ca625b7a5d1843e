"""P6: QLoRA on the 8B architecture at 16 frames: peak GPU memory and tokens/s, ours vs a plain
transformers + PEFT + bitsandbytes loop on the same model and batch (goals: <= 20 GiB, >= 1.3x).

Usage (GPU):  .venv/bin/python benchmarks/qlora_8b.py [--steps 10] [--frames 16] [--frame-size 448] [--work DIR]
Smoke (CPU):  .venv/bin/python benchmarks/qlora_8b.py --model tiny --steps 3 --frames 4

No download: `--model 8b` builds LLaVA-OneVision-1.5-8B from its shipped config with random bf16 weights (on the
GPU, then saved once under --work and reused), and the tiny twin's tokenizer/processor files go beside it. Compute
and memory depend on shapes, not on weight values, so both are the real model's. The batch is synthetic with the
real layout: per clip `frames` frames at `frame_size` px (patch rows + `video_grid_thw`), the matching run of
video placeholder tokens between vision start/end, text around it, the answer's tokens labelled.

ours  = the pipeline's own pieces: `load_for_training` (configs/training_config.yaml: NF4 + double quant, bf16 compute,
        FlashAttention when installed, gradient checkpointing, LoRA r 64 on q/k/v/o/gate/up/down) and
        `ProfiledTrainer` with `training_arguments` (paged 8-bit AdamW on CUDA), gradient accumulation 1.
plain = `from_pretrained` with a BitsAndBytesConfig (NF4, double quant, bf16 compute, the same modules kept out
        of 4-bit), `prepare_model_for_kbit_training` (gradient checkpointing, non-reentrant as PEFT advises),
        the same LoRA, torch AdamW, a bare loop.
Step time: median over the steps after `--warmup`, synchronised; tokens/s = non-pad tokens per step / that.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COMPLETE = ".complete"


def random_8b_checkpoint(out: Path, device: str) -> Path:
    """The 8B architecture with random weights, saved once (bf16 safetensors + the tiny processor files)."""
    import torch

    from app.models.inspect import SHIPPED_8B_CONFIG
    from app.models.llava_ov15 import LlavaOV15Config, LlavaOV15ForConditionalGeneration
    from app.models.loading import load_processor
    from app.models.tiny import build_tiny_llava_ov15

    if (out / COMPLETE).exists():
        return out
    config = LlavaOV15Config.from_json_file(str(SHIPPED_8B_CONFIG))
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):  # initialising 8.5B weights is seconds on a GPU, minutes on a CPU
            model = LlavaOV15ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    load_processor(str(build_tiny_llava_ov15(out.parent / "tiny-processor"))).save_pretrained(out)
    (out / COMPLETE).touch()
    return out


def synthetic_sample(config, frames: int, frame_size: int, text: int = 48, answer: int = 16) -> dict[str, Any]:
    """One training sample with the processor's layout (uint8-range pixels normalised, patch rows, grid)."""
    import torch

    vc = config.vision_config
    patch, merge = vc.patch_size, vc.spatial_merge_size
    side = frame_size // patch
    grid = torch.tensor([[frames, side, side]])
    n_vision = frames * side * side // merge**2
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(frames * side * side, vc.in_channels * patch * patch, generator=gen)
    special = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id}
    vocab = [i for i in range(min(config.text_config.vocab_size, 5000)) if i not in special]
    words = torch.tensor(vocab)[torch.randint(len(vocab), (text + answer,), generator=gen)]
    ids = torch.cat([words[: text // 2], torch.tensor([config.vision_start_token_id]),
                     torch.full((n_vision,), config.video_token_id), torch.tensor([config.vision_end_token_id]),
                     words[text // 2:]])
    labels = torch.full_like(ids, -100)
    labels[-answer:] = ids[-answer:]
    return {"input_ids": ids, "labels": labels, "pixel_values_videos": pixels, "video_grid_thw": grid}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1024**3 if device.startswith("cuda") else None


def _reset(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_ours(cfg, sample: dict, steps: int, warmup: int, work: Path, device: str) -> list[float]:
    from transformers import PrinterCallback, TrainerCallback

    from app.data.padding import PaddingCollator
    from app.models.setup import load_for_training
    from app.profiler import Profiler
    from app.training.arguments import training_arguments
    from app.training.hooks import ProfiledTrainer, ProfilerCallback

    model, processor, _ = load_for_training(cfg, "qlora")
    on_cuda = device.startswith("cuda")
    batch = cfg.training.per_device_batch_size
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            _sync(device)
            stamps.append(time.perf_counter())

    trainer = ProfiledTrainer(model=model, args=training_arguments(cfg, work / "ours", None, on_cuda),
                              train_dataset=[sample] * (batch * (steps + warmup + 1)),
                              data_collator=PaddingCollator(pad_token_id=0),
                              profiler=Profiler("qlora", use_cuda=on_cuda))
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProfilerCallback(trainer))
    trainer.add_callback(Stamp())
    trainer.train()
    del trainer, model, processor
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)][warmup:]


def run_plain(cfg, ckpt: Path, sample: dict, steps: int, warmup: int, device: str) -> list[float]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from app.data.padding import PaddingCollator
    from app.models.llava_ov15 import LlavaOV15ForConditionalGeneration
    from app.models.loading import lora_target_modules

    compute = getattr(torch, cfg.quantization.compute_dtype)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=["visual", "lm_head"])
    model = LlavaOV15ForConditionalGeneration.from_pretrained(
        str(ckpt), quantization_config=quant, dtype=compute,
        device_map={"": torch.device(device).index or 0} if device.startswith("cuda") else None)
    model = prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = lora_target_modules("llava_ov15", cfg.lora.train_merger, cfg.lora.target_modules)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=targets.target_modules,
                                             modules_to_save=targets.modules_to_save or None, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.training.learning_rate)
    batch = PaddingCollator(pad_token_id=0)([sample] * cfg.training.per_device_batch_size)
    batch.pop("index", None)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(compute)
    model.train()
    times = []
    for _ in range(steps + warmup):
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    del model, opt, batch
    return times[warmup:]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("8b", "tiny"), default="8b")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--frame-size", type=int, default=None, help="default 448 (8b), 56 (tiny)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="keeps the random 8B checkpoint between runs")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from app.config import load_config
    from app.models.llava_ov15 import LlavaOV15Config
    from app.models.tiny import build_tiny_llava_ov15
    from app.quiet import quiet_third_party

    quiet_third_party()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = args.work or Path(tempfile.mkdtemp(prefix="p6-"))
    size = args.frame_size or (448 if args.model == "8b" else 56)
    if args.model == "8b":
        ckpt = random_8b_checkpoint(work / "llava-ov15-8b-random", device)
        cfg_file = REPO / "configs" / "training_config.yaml"
    else:
        ckpt = build_tiny_llava_ov15(work / "tiny")
        cfg_file = REPO / "configs" / "tiny_cpu.yaml"
    cfg = load_config(cfg_file, [
        f"model.name_or_path={ckpt}", "model.tiny=false", f"use_cpu={device == 'cpu'}",
        "training.per_device_batch_size=1", "training.gradient_accumulation_steps=1", "training.num_epochs=1",
        "training.dataloader_workers=0", "training.save_steps=1000000", "training.warmup_ratio=0",
        f"data.max_pixels={size * size}", f"data.num_frames={args.frames}",
    ])
    sample = synthetic_sample(LlavaOV15Config.from_pretrained(str(ckpt)), args.frames, size)
    tokens = int(sample["input_ids"].numel()) * cfg.training.per_device_batch_size

    rows = []
    for name, fn in (("ours", lambda: run_ours(cfg, sample, args.steps, args.warmup, work, device)),
                     ("plain transformers + PEFT + bnb", lambda: run_plain(cfg, ckpt, sample, args.steps,
                                                                           args.warmup, device))):
        _reset(device)
        step = statistics.median(fn())
        rows.append({"loop": name, "step_seconds": step, "tokens_per_second": tokens / step,
                     "peak_gpu_gib": _peak_gib(device)})
        _reset(device)
    speedup = rows[0]["tokens_per_second"] / rows[1]["tokens_per_second"]

    table = Table(title=f"P6: QLoRA {args.model}, {args.frames} frames at {size} px, {tokens} tokens/sample, "
                        f"batch 1, {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'})")
    for col in ("loop", "median step (s)", "tokens/s", "peak GPU memory (GiB)"):
        table.add_column(col)
    for r in rows:
        mem = "n/a (CPU)" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.2f}"
        if r["loop"] == "ours" and r["peak_gpu_gib"] is not None:
            mem += " (goal <= 20)"
        table.add_row(r["loop"], f"{r['step_seconds']:.3f}", f"{r['tokens_per_second']:.1f}", mem)
    table.add_row("ours / plain tokens/s", "", f"{speedup:.2f}x (goal >= 1.3x)", "")
    Console(width=160).print(table)
    assert all(math.isfinite(r["tokens_per_second"]) for r in rows)
    return rows


if __name__ == "__main__":
    main()
