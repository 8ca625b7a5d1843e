"""P4: batched vs one-by-one held-out evaluation on the tiny model (samples/s), and whether predictions match.

Usage: .venv/bin/python benchmarks/eval_batching.py [--clips 40] [--repeats 3] [--batch 8] [--adapter DIR]
       [--no-frame-cache]
Prints one table; the ratio is batched / one-by-one from the same repeat, the median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--adapter", type=Path, default=None, help="evaluate base + this adapter instead of the base")
    ap.add_argument("--no-frame-cache", action="store_true", help="decode every clip on every pass (as before #9)")
    args = ap.parse_args()

    from app.config import load_config
    from app.data.ego4d import load_records
    from app.data.synthetic import make_sample_set
    from app.evaluation.generate import EVAL_REGIONS, eval_items, evaluate_items
    from app.models.setup import load_adapter, load_model
    from app.profiler import Profiler
    from app.quiet import quiet_third_party

    quiet_third_party()
    work = Path(tempfile.mkdtemp(prefix="p4-"))
    make_sample_set(work / "data", clips=args.clips, seed=0, progress=False)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml", [
        f"data.data_path={work / 'data' / 'Ego4D.json'}", f"data.video_folder={work / 'data' / 'videos'}",
        "data.eval_ids_file=null", "data.eval_fraction=0.999",
        # The warm-up pass fills the frame cache; the timed passes read it, as any evaluation after the first does.
        f"data.frame_cache_dir={work / 'frames'}", f"data.frame_cache={not args.no_frame_cache}",
        f"model.cache_dir={work / 'models'}",
    ])
    if args.adapter:
        model, processor, _ = load_adapter(cfg, args.adapter)
    else:
        model, processor, _ = load_model(cfg, "baseline")
    items = eval_items(load_records(cfg.data).eval)

    def run(batch: int) -> tuple[float, list[str]]:
        rows: list[dict] = []
        prof = Profiler("bench", regions=EVAL_REGIONS)
        t0 = time.perf_counter()
        evaluate_items(model, processor, items, cfg.data, batch, args.max_new_tokens, prof, rows.extend,
                       lambda it, e: None)
        return len(items) / (time.perf_counter() - t0), [r["prediction"] for r in rows]

    run(args.batch)  # warm-up: first decode and first kernels
    batched, single, ratios, same = [], [], [], True
    for _ in range(args.repeats):
        b, pb = run(args.batch)
        s, ps = run(1)
        batched.append(b)
        single.append(s)
        ratios.append(b / s)
        same &= pb == ps
    cache = "off" if args.no_frame_cache else "on"
    table = Table(title=f"P4: held-out evaluation, {len(items)} questions, tiny LLaVA-OV-1.5, CPU, frame cache {cache}")
    for col in ("setting", "samples/s (median)", "runs"):
        table.add_column(col)
    table.add_row(f"batched (batch {args.batch})", f"{statistics.median(batched):.1f}",
                  ", ".join(f"{x:.1f}" for x in batched))
    table.add_row("one by one", f"{statistics.median(single):.1f}", ", ".join(f"{x:.1f}" for x in single))
    table.add_row("ratio batched / one-by-one", f"{statistics.median(ratios):.2f}x (goal >= 3x)",
                  ", ".join(f"{x:.2f}" for x in ratios))
    table.add_row("identical predictions", str(same), "")
    Console().print(table)


if __name__ == "__main__":
    main()
