"""Does the pipeline learn? Held-out accuracy per question type, M0 and M1, against chance, for one config.

Runs the user's path in a work folder, as subprocesses of the installed CLI: `ego4d-ft data sample` (kept when the
same clips and seed are already there), `baseline`, `train --mode qlora`; tracking is off so that nothing lands
in the project's MLflow store. Then prints one row per question type: questions scored, chance (the most common
held-out answer's share), M0, M1 and M1's margin over chance. Use it after a change to the model, the data path
or the trainer, to show the demo still learns what it learned before (benchmarks/RESULTS.md, "The demo's
learning"):

    .venv/bin/python benchmarks/learning.py [--config configs/demo_cpu.yaml] [--clips 20000] [--held-out 240] \
        [--seed 0] [--set training.learning_rate=0.002 ...] [--work DIR]

The clips are the demo's (`make demo`: 56 px, 8 frames, objects of radius 0.3, no audio).
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

REPO = Path(__file__).resolve().parents[1]
EGO = Path(sys.executable).with_name("ego4d-ft")


def _run(step: str, *args: str) -> float:
    """Run one CLI command; on failure, exit with its last error line (the CLI prints one)."""
    started = time.perf_counter()
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([str(EGO), *args], capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise SystemExit(f"{step} failed (exit {out.returncode}): {last[0]}")
    return time.perf_counter() - started


# The demo's clips (Makefile `demo`): short, small, no audio, larger objects; written by two processes.
DEMO_DATA = ("--size", "56", "--frames", "8", "--object-size", "0.3", "--no-audio", "--workers", "2")


def _sample(work: Path, clips: int, seed: int, held_out: int, mcq: bool = False) -> Path:
    sample = work / f"sample-{clips}-{seed}-{held_out}{'-mcq' if mcq else ''}"
    if not (sample / "eval_ids.txt").is_file():  # written last by `data sample`
        _run("data sample", "data", "sample", "--out", str(sample), "--clips", str(clips), "--seed", str(seed),
             "--held-out", str(held_out), *DEMO_DATA, *(["--mcq"] if mcq else []))
    return sample


def learning_table(m0: dict, m1: dict) -> list[dict]:
    """One row per question type from two results' `metrics` dicts (baseline and the trained adapter)."""
    rows = []
    for qtype in sorted(set(m0.get("accuracy_by_type") or {}) | set(m1.get("accuracy_by_type") or {})):
        chance = (m1.get("chance_by_type") or m0.get("chance_by_type") or {}).get(qtype)
        acc0, acc1 = (m.get("accuracy_by_type", {}).get(qtype) for m in (m0, m1))
        rows.append({"type": qtype, "questions": (m1.get("count_by_type") or m0.get("count_by_type") or {}).get(qtype),
                     "chance": chance, "m0": acc0, "m1": acc1,
                     "margin": None if acc1 is None or chance is None else acc1 - chance})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo_cpu.yaml")
    ap.add_argument("--clips", type=int, default=20000, help="clips in the synthetic set")
    ap.add_argument("--held-out", type=int, default=240, help="held-out clips among them")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for baseline and train, repeatable")
    ap.add_argument("--work", type=Path, default=REPO / ".cache" / "learning")
    ap.add_argument("--no-baseline", action="store_true", help="train and score M1 only (M0 shows n/a)")
    ap.add_argument("--mcq", action="store_true", help="every question as 4-way multiple choice (answers: letters)")
    args = ap.parse_args(argv)

    work = args.work.resolve()
    sample = _sample(work, args.clips, args.seed, args.held_out, args.mcq)
    out = work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    sets = [f"data.data_path={sample / 'Ego4D.json'}", f"data.video_folder={sample / 'videos'}",
            f"data.eval_ids_file={sample / 'eval_ids.txt'}", f"output_dir={out}", "tracking.enabled=false",
            f"training.seed={args.seed}", *args.sets]
    flags = ["--config", str(args.config)] + [a for s in sets for a in ("--set", s)]
    seconds = {"baseline": 0.0 if args.no_baseline else _run("baseline", "baseline", *flags),
               "train": _run("train", "train", "--mode", "qlora", *flags)}
    m0 = {} if args.no_baseline else \
        json.loads((out / "training" / "baseline" / "baseline_results.json").read_text())["metrics"]
    trained = json.loads((out / "training" / "qlora" / "training_results.json").read_text())
    rows = learning_table(m0, trained.get("eval") or {})

    def f(v: float | None, sign: bool = False) -> str:
        return "n/a" if v is None else f"{v:{'+' if sign else ''}.3f}"

    table = Table(title=f"Held-out accuracy per question type: {args.config.name}, {args.clips} clips (seed "
                        f"{args.seed}){', ' + ', '.join(args.sets) if args.sets else ''}")
    for name in ("type", "questions", "chance", "M0", "M1", "M1 - chance"):
        table.add_column(name, justify="left" if name == "type" else "right")
    for r in rows:
        table.add_row(r["type"], str(r["questions"]), f(r["chance"]), f(r["m0"]), f(r["m1"]), f(r["margin"], True))
    console = Console(width=140)
    console.print(table)
    m1 = trained.get("eval") or {}
    mcq = {name: {k: m.get(k) for k in ("mcq_accuracy", "mcq_accuracy_ll", "mcq_questions")}
           for name, m in (("m0", m0), ("m1", m1))} if args.mcq else None
    if mcq:
        console.print("multiple choice (letter written / most likely option): "
                      f"M0 {f(mcq['m0']['mcq_accuracy'])} / {f(mcq['m0']['mcq_accuracy_ll'])}, "
                      f"M1 {f(mcq['m1']['mcq_accuracy'])} / {f(mcq['m1']['mcq_accuracy_ll'])} "
                      f"over {mcq['m1']['mcq_questions']} questions", highlight=False)
    console.print(f"baseline {seconds['baseline']:.0f} s, train + evaluation {seconds['train']:.0f} s "
                  f"({trained.get('train_seconds', 0):.0f} s training, last epoch loss "
                  f"{(trained.get('epoch_losses') or [{}])[-1].get('mean_loss', float('nan')):.3f}); runs in {out}",
                  highlight=False)
    summary = {"config": str(args.config), "clips": args.clips, "seed": args.seed, "sets": args.sets,
               "rows": rows, "mcq": mcq, "seconds": seconds, "train_seconds": trained.get("train_seconds"),
               "out": str(out)}
    (out / "learning.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
