"""What does the tiny twin need to learn direction? Fresh in-memory clips, the project's model and encoding.

A research tool for issue #14, not the pipeline: each training example is a clip rendered on the fly by
`app.data.synthetic` (no mp4, no cache), encoded by `app.data.conversation` exactly as training does, and fed to the
tiny LLaVA-OV-1.5 twin with the project's QLoRA setup (`attach_lora`) in a plain loop. Held-out clips come from a
separate seed. It prints held-out accuracy per question type at the end (and every `--eval-every` steps).

Switches, each one a hypothesis (benchmarks/RESULTS.md, "What direction needs"):
  --scene A          a static lighting gradient (+-A on red left to right, on blue top to bottom) behind the
                     object: the landmarks a real scene has, which tell a token where in the frame it is
  --identity KIND    diagnostic only: add a fixed random vector per vision-token identity to the merger output:
                     `cell` (which 2x2 window of the frame), `frame` (which frame), `both`, or `none`
  --mode lora        bf16/fp32 base instead of 4-bit (QLoRA is the default)
  --head             train lm_head in full too

    .venv/bin/python benchmarks/learning_diagnostics.py --clips 6000 --head --scene 30
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.data import synthetic  # noqa: E402
from app.data.conversation import encode_for_training, encode_prompt  # noqa: E402
from app.data.ego4d import Record, Turn  # noqa: E402
from app.data.padding import PaddingCollator  # noqa: E402
from app.models.loading import attach_lora, load_model_and_processor  # noqa: E402
from app.models.tiny import build_tiny_llava_ov15  # noqa: E402


def render(spec: synthetic.ClipSpec, frames: int, size: int, seed: int, scene: float) -> np.ndarray:
    """(T, 3, H, W) uint8; with `scene`, background pixels get the static lighting gradient (the object does not)."""
    video = synthetic.render_frames(spec, frames, size, seed)
    if scene:
        ramp = np.linspace(-scene, scene, size)
        light = np.zeros((size, size, 3))
        light[..., 0] += ramp[None, :]
        light[..., 2] += ramp[:, None]
        background = np.abs(video.astype(int) - 118).max(-1, keepdims=True) <= 20  # the object is saturated colour
        video = np.where(background, np.clip(video + light[None], 0, 255), video).astype(np.uint8)
    return np.ascontiguousarray(video.transpose(0, 3, 1, 2))


def record(spec: synthetic.ClipSpec, rng: random.Random) -> Record:
    turns = []
    for k, qtype in enumerate(spec.types):
        question = rng.choice(synthetic.PHRASINGS[qtype])
        turns += [Turn("human", ("<image>\n" if k == 0 else "") + question), Turn("gpt", getattr(spec, qtype), qtype)]
    return Record(id=spec.clip_id, video=Path("in-memory"), turns=turns)


def add_identity(model: torch.nn.Module, kind: str, tokens_per_frame: int, frames: int, width: int) -> None:
    """Diagnostic: a fixed random vector per vision token's cell / frame / both, added after the merger."""
    per_clip = tokens_per_frame * frames
    table = torch.randn(per_clip, width, generator=torch.Generator().manual_seed(3))
    merger = next(m for n, m in model.named_modules() if n.endswith("visual.merger"))

    def hook(_module, _inputs, out: torch.Tensor) -> torch.Tensor:
        i = torch.arange(out.shape[0]) % per_clip
        i = {"cell": i % tokens_per_frame, "frame": (i // tokens_per_frame) * tokens_per_frame, "both": i}[kind]
        return out + table[i].to(out.dtype) * out.detach().std()

    merger.register_forward_hook(hook)


def evaluate(model, processor, held_out: list[tuple[Record, np.ndarray]]) -> dict[str, float]:
    pad = processor.tokenizer.pad_token_id
    eos = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), pad]
    items = [(r, f, k) for r, f in held_out for k in range(len(r.question_types))]
    hits: dict[str, list[int]] = {t: [0, 0] for t in synthetic.QUESTION_TYPES}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), 32):
            chunk = items[i:i + 32]
            prompts, refs = zip(*[encode_prompt(r, f, processor, k) for r, f, k in chunk], strict=True)
            batch = PaddingCollator(pad, padding_side="left")(list(prompts))
            batch.pop("index", None)
            out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=pad, eos_token_id=eos)
            preds = processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for (r, _, k), ref, pred in zip(chunk, refs, preds, strict=True):
                qtype = r.question_types[k]
                hits[qtype][0] += pred.strip().lower() == ref.lower()
                hits[qtype][1] += 1
    model.train()
    return {t: h / n for t, (h, n) in hits.items() if n}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=6000, help="training clips, each rendered fresh")
    ap.add_argument("--held-out", type=int, default=240)
    ap.add_argument("--size", type=int, default=56, help="frame side in pixels (56: 2x2 vision tokens a frame)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--scene", type=float, default=0.0)
    ap.add_argument("--identity", choices=("none", "cell", "frame", "both"), default="none")
    ap.add_argument("--mode", choices=("qlora", "lora"), default="qlora")
    ap.add_argument("--head", action="store_true")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "learning")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    path = build_tiny_llava_ov15(args.work / "tiny-llava-ov15")
    model, processor = load_model_and_processor(
        str(path), mode="baseline" if args.mode == "lora" else "qlora", torch_dtype="float32",
        compute_dtype="float32", min_pixels=784, max_pixels=args.size * args.size)
    model = attach_lora(model, args.mode, r=args.r, alpha=2 * args.r, dropout=0.0, train_merger=True,
                        gradient_checkpointing=False)
    if args.head:
        model.base_model.model.lm_head.weight.requires_grad_(True)
    if args.identity != "none":
        side = args.size // 28
        add_identity(model, args.identity, side * side, args.frames, model.config.text_config.hidden_size)

    rng = random.Random(args.seed + 7)
    train = synthetic.plan_clips(args.clips, 1000 + args.seed, args.size)
    held_out = [(record(s, rng), render(s, args.frames, args.size, 5, args.scene))
                for s in synthetic.plan_clips(args.held_out, 99, args.size)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = math.ceil(args.clips / args.batch)
    from transformers import get_cosine_schedule_with_warmup

    schedule = get_cosine_schedule_with_warmup(optimizer, int(0.03 * steps), steps)
    collate = PaddingCollator(processor.tokenizer.pad_token_id)
    console = Console(width=120)
    started, losses = time.perf_counter(), []
    model.train()
    for step, i in enumerate(range(0, args.clips, args.batch), start=1):
        batch = collate([encode_for_training(record(s, rng), render(s, args.frames, args.size, 1000 + j, args.scene),
                                             processor) for j, s in enumerate(train[i:i + args.batch], start=i)])
        batch.pop("index", None)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            console.print(f"step {step}/{steps} loss {np.mean(losses[-50:]):.3f} "
                          f"{time.perf_counter() - started:.0f} s", highlight=False)
        if args.eval_every and step % args.eval_every == 0 and step < steps:
            console.print(f"  held-out at step {step}: {evaluate(model, processor, held_out)}", highlight=False)
    seconds = time.perf_counter() - started
    result = evaluate(model, processor, held_out)
    console.print("settings: " + " ".join(argv if argv is not None else sys.argv[1:]), highlight=False)
    table = Table(title=f"held-out accuracy after {steps} steps ({seconds:.0f} s)")
    for qtype in result:
        table.add_column(qtype, justify="right")
    table.add_row(*(f"{v:.3f}" for v in result.values()))
    console.print(table)
    return result


if __name__ == "__main__":
    main()
