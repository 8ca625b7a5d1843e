"""P8: the real 8B path end to end on a CPU, once — build, load in 4 bit, train, save, reload, generate.

A benchmark, not a test: the random checkpoint is ~17 GB on disk and the whole run takes tens of minutes on a
2-core machine (building the weights and quantising them on load dominate). Three fresh processes, so that each
stage's peak memory is its own:

1. build:  LLaVA-OneVision-1.5-8B from the shipped config with random bf16 weights, saved as safetensors shards
           (reused when already under --work);
2. train:  `load_for_training` exactly as `ego4d-ft train --mode qlora` calls it (NF4 + double quantisation on the fly,
           LoRA r 64 on q/k/v/o/gate/up/down), then `--steps` optimizer steps of one synthetic sample (1 frame at
           112 px by default) in a plain loop, then the adapter saved;
3. reload: a fresh 4-bit base + that adapter (`load_adapter`, as `evaluate --model` does) generating a few tokens.

Host memory is reported honestly: peak *anonymous* RSS (RssAnon, sampled every 50 ms), which leaves out the page
cache of the memory-mapped checkpoint that plain RSS/VmHWM would count; VmHWM is shown beside it. The floor for
training is what must be resident: 4-bit LLM linears at 4.5 bit/param (NF4 + double-quantised scales), the
vision tower, embeddings and lm_head at the compute dtype, and LoRA weights + gradients + 2 AdamW moments (fp32).
Compute is fp32 on a CPU (`configs/training_config.yaml`'s bf16 compute is minutes per matmul here).

    .venv/bin/python benchmarks/qlora_8b_cpu.py --work /path/with/20GB [--steps 1] [--frames 1] [--frame-size 112]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
GIB = 1024**3


class PeakMemory:
    """Samples this process's RssAnon every 50 ms on a thread; `peak` is the largest seen (bytes)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.status("RssAnon"))
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self.peak = self.status("RssAnon")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.status("RssAnon"))


def _config(ckpt: Path, frames: int, size: int):
    from app.config import load_config

    return load_config(REPO / "configs" / "training_config.yaml", [
        f"model.name_or_path={ckpt}", "model.tiny=false", "use_cpu=true", "quantization.compute_dtype=float32",
        "model.gradient_checkpointing=true", f"data.max_pixels={size * size}", f"data.num_frames={frames}",
    ])


def _checkpoint(work: Path) -> Path:
    return work / "llava-ov15-8b-random"


def stage_build(work: Path, model: str) -> dict:
    from qlora_8b import random_8b_checkpoint

    from app.models.tiny import build_tiny_llava_ov15

    started = time.perf_counter()
    with PeakMemory() as mem:
        if model == "tiny":  # the same three stages in seconds, for a smoke test of this script
            ckpt = build_tiny_llava_ov15(_checkpoint(work))
        else:
            ckpt = random_8b_checkpoint(_checkpoint(work), "cpu")
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    return {"seconds": time.perf_counter() - started, "peak_anon": mem.peak, "vmhwm": PeakMemory.status("VmHWM"),
            "checkpoint_bytes": size}


def _floor_bytes(model, lora_params: int) -> dict:
    from app.models.inspect import logical_numel

    quantized = sum(logical_numel(p) for p in model.parameters() if getattr(p, "quant_state", None) is not None)
    dense = sum(p.numel() * p.element_size() for p in model.parameters()
                if getattr(p, "quant_state", None) is None and not p.requires_grad)
    return {"quantized_params": quantized, "total_params": sum(logical_numel(p) for p in model.parameters()),
            "floor": int(quantized * 4.5 / 8) + dense + lora_params * 16}


def stage_train(work: Path, steps: int, frames: int, size: int) -> dict:
    import torch
    from qlora_8b import synthetic_sample

    from app.data.padding import PaddingCollator
    from app.models.llava_ov15 import LlavaOV15Config
    from app.models.setup import load_for_training

    ckpt = _checkpoint(work)
    cfg = _config(ckpt, frames, size)
    started = time.perf_counter()
    with PeakMemory() as load_mem:
        model, processor, _ = load_for_training(cfg, "qlora")
    load_seconds = time.perf_counter() - started
    trainable = [p for p in model.parameters() if p.requires_grad]
    figures = _floor_bytes(model, sum(p.numel() for p in trainable))
    sample = synthetic_sample(LlavaOV15Config.from_pretrained(str(ckpt)), frames, size)
    batch = PaddingCollator(pad_token_id=0)([sample])
    batch.pop("index", None)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    model.train()
    step_seconds = []
    with PeakMemory() as train_mem:
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_seconds.append(time.perf_counter() - t0)
    model.save_pretrained(str(work / "adapter"))
    processor.save_pretrained(str(work / "adapter"))
    (work / "adapter" / "ego4d_ft.json").write_text(json.dumps({"mode": "qlora", "base_model": str(ckpt)}))
    return {**figures, "trainable_params": sum(p.numel() for p in trainable), "load_seconds": load_seconds,
            "load_peak_anon": load_mem.peak, "train_peak_anon": train_mem.peak, "vmhwm": PeakMemory.status("VmHWM"),
            "step_seconds": step_seconds, "loss": float(loss.detach()), "tokens": int(batch["input_ids"].numel())}


def stage_reload(work: Path, frames: int, size: int) -> dict:
    import torch
    from qlora_8b import synthetic_sample

    from app.models.llava_ov15 import LlavaOV15Config
    from app.models.setup import load_adapter

    ckpt = _checkpoint(work)
    cfg = _config(ckpt, frames, size)
    started = time.perf_counter()
    with PeakMemory() as mem:
        model, _, _ = load_adapter(cfg, work / "adapter")
        load_seconds = time.perf_counter() - started
        sample = synthetic_sample(LlavaOV15Config.from_pretrained(str(ckpt)), frames, size, answer=0)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=sample["input_ids"][None], pixel_values_videos=sample["pixel_values_videos"],
                                 video_grid_thw=sample["video_grid_thw"], max_new_tokens=4, do_sample=False)
    new = out.shape[1] - sample["input_ids"].numel()
    return {"load_seconds": load_seconds, "generate_seconds": time.perf_counter() - t0, "new_tokens": int(new),
            "peak_anon": mem.peak, "vmhwm": PeakMemory.status("VmHWM")}


def _stage(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(args.work), "--steps", str(args.steps),
           "--frames", str(args.frames), "--frame-size", str(args.frame_size), "--model", args.model]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ})
    if out.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder with ~20 GB free; keeps the checkpoint")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--frame-size", type=int, default=112)
    ap.add_argument("--model", choices=("8b", "tiny"), default="8b", help="tiny: a smoke run of the script")
    ap.add_argument("--stage", choices=("build", "train", "reload"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        from app.quiet import quiet_third_party

        quiet_third_party()
        stages = {"build": lambda: stage_build(args.work, args.model),
                  "train": lambda: stage_train(args.work, args.steps, args.frames, args.frame_size),
                  "reload": lambda: stage_reload(args.work, args.frames, args.frame_size)}
        fn = stages[args.stage]
        print(json.dumps(fn()))
        return {}

    args.work.mkdir(parents=True, exist_ok=True)
    res = {name: _stage(name, args) for name in ("build", "train", "reload")}
    b, t, r = res["build"], res["train"], res["reload"]
    table = Table(title=f"P8: LLaVA-OV-1.5 {args.model} QLoRA on CPU, {args.frames} frame(s) at {args.frame_size} px, "
                        f"{t['tokens']} tokens, fp32 compute")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("build: seconds / peak anon RSS / VmHWM", f"{b['seconds']:.0f} s / {b['peak_anon'] / GIB:.1f} / "
                                                    f"{b['vmhwm'] / GIB:.1f} GiB"),
        ("checkpoint on disk", f"{b['checkpoint_bytes'] / GIB:.1f} GiB"),
        ("parameters (logical) / 4-bit / trainable", f"{t['total_params']:,} / {t['quantized_params']:,} / "
                                                      f"{t['trainable_params']:,}"),
        ("load in 4 bit: seconds / peak anon RSS", f"{t['load_seconds']:.0f} s / {t['load_peak_anon'] / GIB:.1f} GiB"),
        ("training: peak anon RSS", f"{t['train_peak_anon'] / GIB:.1f} GiB"),
        ("training floor", f"{t['floor'] / GIB:.1f} GiB"),
        ("peak / floor", f"{t['train_peak_anon'] / t['floor']:.2f} (goal <= 1.5)"),
        ("train process VmHWM (mapped pages included)", f"{t['vmhwm'] / GIB:.1f} GiB"),
        ("seconds per step", ", ".join(f"{s:.0f}" for s in t["step_seconds"])),
        ("loss", f"{t['loss']:.3f}"),
        ("reload (4-bit base + adapter): seconds / peak anon RSS", f"{r['load_seconds']:.0f} s / "
                                                                    f"{r['peak_anon'] / GIB:.1f} GiB"),
        ("generate: new tokens / seconds", f"{r['new_tokens']} / {r['generate_seconds']:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console(width=140).print(table)
    return res


if __name__ == "__main__":
    main()
