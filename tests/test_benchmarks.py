"""Benchmark scripts that must keep working where no GPU is: P6 smoke-runs on CPU with the tiny twin."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_p6_qlora_benchmark_smoke_runs_on_cpu_with_the_tiny_twin(tmp_path, capsys):
    rows = _load("qlora_8b").main(["--model", "tiny", "--steps", "2", "--warmup", "1", "--frames", "4",
                                   "--work", str(tmp_path)])
    assert [r["loop"] for r in rows] == ["ours", "plain transformers + PEFT + bnb"]
    for r in rows:
        assert math.isfinite(r["step_seconds"]) and r["step_seconds"] > 0
        assert math.isfinite(r["tokens_per_second"]) and r["tokens_per_second"] > 0
        assert r["peak_gpu_gib"] is None  # CPU
    out = capsys.readouterr().out
    assert "P6: QLoRA tiny" in out and "ours / plain tokens/s" in out


def test_p7_head_memory_runs_each_variant_in_its_own_process_with_equal_losses(capsys):
    rows = _load("head_memory").main(["--frames", "1", "--vocab", "4096", "--tokens-per-frame", "16"])
    assert [r["variant"] for r in rows] == ["ours", "full"]
    assert rows[0]["loss"] == rows[1]["loss"] or math.isclose(rows[0]["loss"], rows[1]["loss"], rel_tol=1e-5)
    assert all(r["peak_bytes"] > 0 and r["seq"] == 16 + 64 for r in rows)
    assert "P7: one training step" in capsys.readouterr().out
