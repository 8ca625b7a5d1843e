"""P1: data time per epoch with the decoded-frame cache (epoch 2 / epoch 1, goal <= 0.10), and decord's
sampled-frame decode vs PyAV decoding every frame of the same clips.

Usage: .venv/bin/python benchmarks/frame_cache.py [--repeats 3] [--clips 40] [--long-clips 6]

Two clip sets: the demo's synthetic clips (16 frames, 112 px, sampled as configs/tiny_cpu.yaml does: 8 frames
at 56 px) and longer ones closer to real footage (240 frames at 30 fps, 448 px, sampled 8 frames at 448 px, as
configs/training_config.yaml does). Per repeat a fresh cache folder: epoch 1 decodes and fills it, epoch 2 reads
it. "frames" is the time to get every clip's frames (`load_clip`, what the cache replaces); "samples" is the
whole `VideoQADataset` item (frames + chat template + tokenizer + patchify), what a loader worker spends. One
process, no loader workers, so the times are the work itself. Prints one table; ratios are from the same repeat.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]


def pyav_full_decode(path: Path, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """What a loader without frame-accurate seeking does: decode every frame, keep the uniformly spaced ones."""
    import av

    from app.data.video import uniform_indices

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
    keep = uniform_indices(len(decoded), num_frames)
    h, w = size
    return np.stack([decoded[i].to_ndarray(format="rgb24", width=w, height=h) for i in keep]).transpose(0, 3, 1, 2)


def timed(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--long-clips", type=int, default=6, help="0 skips the long-clip set")
    args = ap.parse_args()

    from app.config import load_config
    from app.data.dataset import VideoQADataset
    from app.data.ego4d import load_records
    from app.data.frame_cache import _CACHES, load_clip
    from app.data.synthetic import make_sample_set
    from app.data.video import sample_frames
    from app.models.loading import load_processor
    from app.models.tiny import build_tiny_llava_ov15
    from app.quiet import quiet_third_party

    quiet_third_party()
    work = Path(tempfile.mkdtemp(prefix="p1-"))
    sets = {"demo clips (16 f, 112 px) -> 8 x 56 px": (make_sample_set(work / "demo", clips=args.clips, seed=0,
                                                                         progress=False), 56)}
    if args.long_clips:
        long = make_sample_set(work / "long", clips=args.long_clips, seed=1, frames=240, size=448, fps=30,
                               progress=False)
        sets["long clips (240 f, 448 px) -> 8 x 448 px"] = (long, 448)
    tiny = str(build_tiny_llava_ov15(work / "tiny"))

    table = Table(title="P1: decoded-frame cache and decoders, one process, CPU")
    for col in ("clips", "what", "epoch 1 (s)", "epoch 2 (s)", "epoch 2 / epoch 1 (median)", "runs"):
        table.add_column(col)
    for label, (summary, px) in sets.items():
        base = [f"data.data_path={summary.data_path}", f"data.video_folder={summary.video_folder}",
                "data.eval_ids_file=null", f"data.max_pixels={px * px}"]
        processor = load_processor(tiny, min_pixels=56 * 56, max_pixels=px * px)  # as the pipeline loads it
        rows: dict[str, list[tuple[float, float]]] = {"frames": [], "samples": []}
        for r in range(args.repeats):
            for what in rows:
                cfg = load_config(REPO / "configs" / "tiny_cpu.yaml",
                                  [*base, f"data.frame_cache_dir={work / f'cache-{px}-{what}-{r}'}"])
                records = load_records(cfg.data).records
                if what == "frames":
                    fn, items = (lambda rec, c=cfg: load_clip(rec.video, c.data)), records
                else:
                    ds = VideoQADataset(records, cfg.data, processor)
                    fn, items = ds.__getitem__, range(len(ds))
                _CACHES.clear()  # a new run: no in-process state carried over
                rows[what].append((timed(fn, items), timed(fn, items)))
        for what, runs in rows.items():
            ratios = [b / a for a, b in runs]
            table.add_row(f"{len(records)} {label}", f"{what} (cache on)",
                          f"{statistics.median(a for a, _ in runs):.3f}",
                          f"{statistics.median(b for _, b in runs):.3f}",
                          f"{statistics.median(ratios):.3f}" + (" (goal <= 0.10)" if what == "frames" else ""),
                          ", ".join(f"{x:.3f}" for x in ratios))
        # Decoders head to head on the same clips and settings, no cache.
        videos = [rec.video for rec in records]
        dec, full = [], []
        for _ in range(args.repeats):
            dec.append(timed(lambda v, px=px: sample_frames(v, 8, size=(px, px)), videos))
            full.append(timed(lambda v, px=px: pyav_full_decode(v, 8, (px, px)), videos))
        ratios = [f / d for d, f in zip(dec, full, strict=True)]
        per = 1000 / len(videos)
        table.add_row(f"{len(records)} {label}", "decord sampled / PyAV full decode, ms per clip",
                      f"{statistics.median(dec) * per:.1f}", f"{statistics.median(full) * per:.1f}",
                      f"PyAV {statistics.median(ratios):.2f}x slower", ", ".join(f"{x:.2f}" for x in ratios))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
