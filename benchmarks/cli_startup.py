"""P5: wall time of `ego4d-ft --help` (goal < 1 s), the installed console script in a fresh process each time.

Usage: .venv/bin/python benchmarks/cli_startup.py [--repeats 7]
The first run is a warm-up (file cache) and left out. Prints one table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    ego = str(Path(sys.executable).parent / "ego4d-ft")
    times = []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        subprocess.run([ego, "--help"], check=True, capture_output=True)
        if i:
            times.append(time.perf_counter() - t0)
    table = Table(title="P5: `ego4d-ft --help` wall time")
    for col in ("median (s)", "min (s)", "max (s)", "runs (s)"):
        table.add_column(col)
    table.add_row(f"{statistics.median(times):.3f} (goal < 1 s)", f"{min(times):.3f}", f"{max(times):.3f}",
                  ", ".join(f"{t:.3f}" for t in times))
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
