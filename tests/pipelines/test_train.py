"""`ego4d-ft train` end to end on the tiny model and real mp4s: files, learning, profiler, DeepSpeed, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import REPO, ego

REGIONS = ("step", "forward", "backward", "optimizer", "data_wait")
STATS = ("mean", "median", "p95", "min", "max")


def _load_adapter(adapter: Path, model_cache: Path):
    from peft import PeftModel

    from app.models.loading import load_model_and_processor

    base, _ = load_model_and_processor(str(model_cache / "tiny-llava-ov15"), mode="baseline")
    return PeftModel.from_pretrained(base, str(adapter))


def _check_profiling(prof: dict, steps: int) -> None:
    assert prof["timer"] == "perf_counter" and prof["peak_gpu_memory_bytes"] is None
    assert prof["num_steps"] == steps and len(prof["epoch_wall_seconds"]) >= 1
    assert prof["total_wall_seconds"] > sum(prof["epoch_wall_seconds"]) > 0
    for region in REGIONS:
        stats = prof[f"{region}_seconds"]
        assert set(STATS) <= set(stats)
        assert 0 <= stats["min"] <= stats["median"] <= stats["p95"] <= stats["max"]
        assert len(prof["raw"]["steps"][region]) == steps
    assert prof["tokens_per_second"] > 0 and prof["samples_per_second"] > 0
    assert prof["peak_host_rss_bytes"] > 50 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["qlora", "lora"])
def test_one_epoch_writes_adapter_results_and_profiling(mode, train_sets, tmp_path, model_cache, request):
    if mode == "qlora":  # the session's shared run: the same command, 1 epoch, batch 4 on sample40
        out = request.getfixturevalue("trained_qlora")
    else:
        res = ego("train", "--mode", mode, sets=[*train_sets, "training.num_epochs=1"])
        assert res.returncode == 0, res.stderr[-2000:]
        out = tmp_path / "results"
    results = json.loads((out / "training" / mode / "training_results.json").read_text())
    assert results["mode"] == mode and results["global_step"] == 8  # 32 train clips, batch 4
    assert results["train_samples"] == 32 and len(results["epoch_losses"]) == 1
    _check_profiling(json.loads((out / "profiling" / f"{mode}_profiling.json").read_text()), steps=8)
    adapter = out / "training" / mode / "final_model"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()
    model = _load_adapter(adapter, model_cache)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    if mode == "qlora":
        import bitsandbytes as bnb

        from app.models.loading import load_model_and_processor

        quantized, _ = load_model_and_processor(str(model_cache / "tiny-llava-ov15"), mode="qlora",
                                                compute_dtype="float32")
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.modules())


@pytest.mark.slow
def test_loss_falls_and_profiler_regions_add_up(train_sets, tmp_path):
    """Four epochs: the model learns (last epoch's mean loss below the first's), and the timed regions account
    for the step. The tighter goal (forward + backward + optimizer within 15% of the step, with data wait
    excluded) depends on machine load, so it is measured by benchmarks/profiler_share.py, not asserted here."""
    res = ego("train", "--mode", "qlora",
              sets=[*train_sets, "training.num_epochs=4", "training.per_device_batch_size=8"])
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "results"
    results = json.loads((out / "training" / "qlora" / "training_results.json").read_text())
    losses = [e["mean_loss"] for e in results["epoch_losses"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    prof = json.loads((out / "profiling" / "qlora_profiling.json").read_text())
    _check_profiling(prof, steps=16)
    # Per step the regions are disjoint parts of the step's span, so their sum can never exceed it.
    raw = prof["raw"]["steps"]
    coverage = sorted(
        (raw["forward"][i] + raw["backward"][i] + raw["optimizer"][i] + raw["data_wait"][i]) / raw["step"][i]
        for i in range(len(raw["step"]))
    )
    assert max(coverage) <= 1.0 + 1e-6, f"regions overlap: {max(coverage):.3f} of a step"
    assert coverage[len(coverage) // 2] >= 0.85, f"timed regions cover {coverage[len(coverage) // 2]:.2f} of a step"


@pytest.mark.slow
# The two mode x stage pairs that tests/distributed/test_torchrun.py does not run with 2 processes.
@pytest.mark.parametrize("mode, zero", [("qlora", "zero2"), ("lora", "zero3")])
def test_deepspeed_engine_on_cpu(mode, zero, train_sets, tmp_path, model_cache):
    ds = REPO / "configs" / f"deepspeed_{zero}.json"
    res = ego("train", "--mode", mode, "--deepspeed", str(ds), sets=[*train_sets, "training.num_epochs=1"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "results"
    results = json.loads((out / "training" / mode / "training_results.json").read_text())
    assert results["zero_stage"] == int(zero[-1]) and results["global_step"] == 8
    prof = json.loads((out / "profiling" / f"{mode}_profiling.json").read_text())
    assert prof["optimizer_in_backward"] is True
    # Under ZeRO-3 the LoRA weights are sharded; the saved adapter must hold the gathered, full tensors.
    from safetensors.torch import load_file

    tensors = load_file(out / "training" / mode / "final_model" / "adapter_model.safetensors")
    assert tensors and all(t.dim() == 2 and t.numel() > 0 for n, t in tensors.items() if "lora_" in n)
    _load_adapter(out / "training" / mode / "final_model", model_cache)


def test_unworkable_deepspeed_combination_fails_before_loading(train_sets, tmp_path):
    ds = json.loads((REPO / "configs" / "deepspeed_zero3.json").read_text())
    ds["zero_optimization"]["offload_param"] = {"device": "cpu"}
    bad = tmp_path / "zero3_offload.json"
    bad.write_text(json.dumps(ds))
    res = ego("train", "--mode", "qlora", "--deepspeed", str(bad), sets=train_sets)
    assert res.returncode == 1
    assert "offload_param" in res.stderr and str(bad) in res.stderr and "Traceback" not in res.stderr
    assert "model:" not in res.stdout  # refused before the model was built
    missing = ego("train", "--mode", "qlora", "--deepspeed", str(tmp_path / "nope.json"), sets=train_sets)
    assert missing.returncode == 1 and "DeepSpeed config not found" in missing.stderr
