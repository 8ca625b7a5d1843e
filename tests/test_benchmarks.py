"""Benchmark scripts that must keep working where no GPU is: P6 smoke-runs on CPU with the tiny twin."""

from __future__ import annotations

import importlib.util
import math

from cli_helpers import REPO


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


def test_p7_head_memory_variants_give_the_same_loss_and_the_head_runs_on_answers_only():
    # The benchmark runs each variant in a fresh process; its `child` step is what this checks (in-process: the
    # two extra interpreter starts cost ~20 s of the suite's budget for no more coverage).
    bench = _load("head_memory")
    rows = [bench.child(v, frames=1, dtype_name="float32", vocab=4096, tokens_per_frame=16) for v in ("ours", "full")]
    assert math.isclose(rows[0]["loss"], rows[1]["loss"], rel_tol=1e-5)
    assert all(r["seq"] == 16 + 64 and r["peak_bytes"] > 0 and r["seconds"] > 0 for r in rows)
