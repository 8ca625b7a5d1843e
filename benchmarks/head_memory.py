"""P7: peak memory of one training step at the real vocabulary and sequence length, LM head on supervised positions
only (ours) vs full-sequence logits (transformers' usual path). Prints one table.

Why: at 16 frames x 256 vision tokens + 64 text tokens and LLaVA-OneVision-1.5's 151,936-token vocabulary, the
full path materialises logits for every position (4,160 x 151,936: 1.3 GB in bf16, 2.5 GB in fp32), their fp32
copy in the loss and their gradient, though only the answer tokens carry labels. The model is narrow on purpose
(1 decoder layer, 256 wide, the real vocabulary), so that the head's share is what the table shows; the vision
tower is left out (text positions stand in for the vision tokens: the head does not know the difference).

Each variant runs in a fresh process (`--child`), so one variant's peak cannot hide in another's. Peak memory:
`torch.cuda.max_memory_allocated` on a GPU; on CPU the process's peak RSS (VmHWM) and the step's own increase
over the RSS before it (weights and the torch runtime excluded). Goal: ours / full <= 0.25.

    .venv/bin/python benchmarks/head_memory.py [--frames 16 32] [--dtype float32|bfloat16]

On this 2-core CPU machine the 32-frame full variant needs ~15 GB; run it with nothing else large running.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

VOCAB = 151_936
TOKENS_PER_FRAME = 256  # 448 x 448 after the 2x2 merge
TEXT_TOKENS = 64
ANSWER_TOKENS = 16
GIB = 1024**3


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(variant: str, frames: int, dtype_name: str, vocab: int, tokens_per_frame: int) -> dict:
    """One training step in this process; returns its figures."""
    import torch

    from app.models.llava_ov15 import LlavaOV15Config, LlavaOV15ForConditionalGeneration

    on_cuda = torch.cuda.is_available()
    device = "cuda" if on_cuda else "cpu"
    dtype = getattr(torch, dtype_name)
    config = LlavaOV15Config(
        text_config=dict(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=32768,
                         tie_word_embeddings=False),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, intermediate_size=64, num_heads=2,
                           text_hidden_size=256),
    )
    torch.manual_seed(0)
    model = LlavaOV15ForConditionalGeneration(config).to(device=device, dtype=dtype)
    model.supervised_logits_only = variant == "ours"
    # As under QLoRA: the head and embeddings frozen, the decoder trained (so the logits' gradient is needed).
    for name, p in model.named_parameters():
        p.requires_grad = ".layers." in name
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seq = frames * tokens_per_frame + TEXT_TOKENS
    input_ids = torch.randint(0, vocab, (1, seq), device=device)
    labels = torch.full_like(input_ids, -100)
    labels[:, -ANSWER_TOKENS:] = input_ids[:, -ANSWER_TOKENS:]
    model.train()
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes("VmRSS")
    started = time.perf_counter()
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if on_cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_bytes("VmHWM")
    return {"variant": variant, "frames": frames, "seq": seq, "device": device, "dtype": dtype_name,
            "loss": float(loss.detach()), "before_bytes": before, "peak_bytes": peak, "step_bytes": peak - before,
            "seconds": time.perf_counter() - started}


def run_variant(variant: str, frames: int, dtype: str, vocab: int, tokens_per_frame: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--frames", str(frames), "--dtype", dtype,
           "--vocab", str(vocab), "--tokens-per-frame", str(tokens_per_frame)]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=repo)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--tokens-per-frame", type=int, default=TOKENS_PER_FRAME)
    parser.add_argument("--child", choices=["ours", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dtype is None:
        import torch

        args.dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    if args.child:
        print(json.dumps(child(args.child, args.frames[0], args.dtype, args.vocab, args.tokens_per_frame)))
        return []

    rows = []
    table = Table(title=f"P7: one training step, vocabulary {args.vocab:,}, {args.dtype}, LM head memory")
    for col in ("frames", "tokens", "variant", "peak (GiB)", "step's own (GiB)", "step (s)", "loss",
                "ours / full (peak)", "ours / full (step's own)"):
        table.add_column(col)
    for frames in args.frames:
        pair = {v: run_variant(v, frames, args.dtype, args.vocab, args.tokens_per_frame) for v in ("ours", "full")}
        for variant, r in pair.items():
            ratio = pair["ours"]["peak_bytes"] / pair["full"]["peak_bytes"]
            step_ratio = pair["ours"]["step_bytes"] / max(pair["full"]["step_bytes"], 1)
            first = variant == "ours"
            table.add_row(str(frames), f"{r['seq']:,}", variant, f"{r['peak_bytes'] / GIB:.2f}",
                          f"{r['step_bytes'] / GIB:.2f}", f"{r['seconds']:.1f}", f"{r['loss']:.4f}",
                          f"{ratio:.3f} (goal <= 0.25)" if first else "", f"{step_ratio:.3f}" if first else "")
            rows.append({**r, "ratio_peak": ratio, "ratio_step": step_ratio})
    Console(width=170).print(table)
    return rows


if __name__ == "__main__":
    main()
