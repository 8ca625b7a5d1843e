"""`train` and `baseline` under a real 2-process `torchrun` (gloo on CPU) against the 1-process runs: one MLflow
run, one adapter, global throughput, the same results structure, and baseline metrics equal to one process's."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import EGO, REPO, TINY, ego, ego_here, tiny_sets

from app.run_files import RunFiles

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
METRICS = ("exact_match", "token_f1", "rouge_l", "bleu4", "anls")
# sample_dir: 12 clips, 10 for training (5 on each of 2 ranks), 2 held out with 6 questions (3 on each rank).
TRAIN_CLIPS, QUESTIONS = 10, 6
# Training batches of 1: 5 clips a rank divide into whole batches, so no rank pads its last batch with repeated
# clips (accelerate's even_batches) and "every clip seen once" can be checked exactly.
BATCH = 1


def sets(sample: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return ["--use-cpu", "--config", str(TINY),
            *tiny_sets(sample, cache, out, "training.num_epochs=1", f"training.per_device_batch_size={BATCH}",
                       "eval.batch_size=2", *extra)]


def torchrun(*args: str) -> Any:
    """`ego4d-ft ARGS` in 2 processes under torchrun, as users start it."""
    launcher = [TORCHRUN, "--standalone", "--nproc_per_node=2", "--no-python", EGO]
    # The cores shared by the 2 processes, not oversubscribed.
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    return ego(*args, launcher=launcher, env={"OMP_NUM_THREADS": threads})


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, lists by their first element (lengths differ with N)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    return "number" if isinstance(value, int | float) else type(value).__name__


def same_shape(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two structures differ; a null beside a number is allowed (e.g. a metric absent in a tiny run)."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = [f"{path}.{k}: only in one" for k in set(a) ^ set(b)]
        return diffs + [d for k in set(a) & set(b) for d in same_shape(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        return same_shape(a[0], b[0], f"{path}[0]") if a and b else []
    if a != b and "NoneType" not in (a, b):
        return [f"{path}: {a} vs {b}"]
    return []


def mlflow_runs(output_dir: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("ego4d-ft")
    return client.search_runs([exp.experiment_id], filter_string=f"params.output_dir = '{output_dir}'")


def read(out: Path, mode: str) -> tuple[dict, dict]:
    files = RunFiles(out)
    return json.loads(files.training_results(mode).read_text()), json.loads(files.profiling(mode).read_text())


@pytest.fixture(scope="module")
def one_process(sample_dir, model_cache, tmp_path_factory) -> tuple[dict, dict]:
    """The reference: the same training in one process, whose files the 2-process runs must match. In this
    process and without DeepSpeed (one-process ZeRO-2 and ZeRO-3 runs are tests/pipelines/test_train.py's),
    so the 2-process DeepSpeed files are held to a plain run's structure; no loader workers, whose persistent
    processes would stall a later garbage collection of this test process."""
    out = tmp_path_factory.mktemp("one") / "results"
    res = ego_here("train", "--mode", "qlora", *sets(sample_dir, model_cache, out, "training.dataloader_workers=0"))
    assert res.returncode == 0, res.stderr[-3000:]
    return read(out, "qlora")


@pytest.mark.slow
# Each mode x ZeRO stage runs once across the suite: these two here with 2 processes, the other two in
# tests/pipelines/test_train.py::test_deepspeed_engine_on_cpu (one process).
@pytest.mark.parametrize("mode, zero", [("qlora", "zero3"), ("lora", "zero2")])
def test_two_process_training_is_one_run_with_one_adapter(mode, zero, one_process, sample_dir, model_cache, tmp_path):
    out = tmp_path / "results"
    res = torchrun("train", "--mode", mode, "--deepspeed", REPO / "configs" / f"deepspeed_{zero}.json",
                   *sets(sample_dir, model_cache, out))
    assert res.returncode == 0, res.stderr[-3000:]
    results, prof = read(out, mode)
    ref_results, ref_prof = one_process

    # The data was split, not repeated: 10 clips over 2 ranks = 5 each, batch 1 = 5 steps, all 10 samples seen once.
    per_rank = TRAIN_CLIPS // 2
    assert results["world_size"] == 2 and results["zero_stage"] == int(zero[-1])
    assert results["global_step"] == per_rank // BATCH and results["train_samples"] == TRAIN_CLIPS
    assert prof["world_size"] == 2 and prof["num_samples"] == TRAIN_CLIPS == ref_prof["num_samples"]
    assert [r["rank"] for r in prof["per_rank"]] == [0, 1]
    assert all(r["num_samples"] == per_rank for r in prof["per_rank"])
    # Global throughput: both ranks' tokens over the slower rank's time in steps.
    assert prof["num_tokens"] == sum(r["num_tokens"] for r in prof["per_rank"]) == ref_prof["num_tokens"]
    busy = max(r["region_seconds"]["step"] for r in prof["per_rank"])
    assert prof["tokens_per_second"] == pytest.approx(prof["num_tokens"] / busy)
    assert prof["samples_per_second"] == pytest.approx(TRAIN_CLIPS / busy)
    rss = [r["peak_host_rss_bytes"] for r in prof["per_rank"]]
    assert prof["peak_host_rss_bytes_max"] == max(rss) == prof["peak_host_rss_bytes"]
    assert prof["peak_host_rss_bytes_mean"] == pytest.approx(sum(rss) / 2)
    assert prof["peak_gpu_memory_bytes_max"] is None  # CPU

    # Same files, same structure as one process (lists may differ in length, not in what they hold).
    assert same_shape(shape(results), shape(ref_results)) == []
    assert same_shape(shape(prof), shape(ref_prof)) == []
    assert results["eval"]["exact_match"] is not None and results["eval"]["answer_nll"] > 0
    evals = json.loads(RunFiles(out).train_eval(mode).results.read_text())
    assert evals["num_answered"] == evals["num_questions"] > 0
    assert not list(RunFiles(out).training_dir(mode).glob(".*"))  # no partial logs, no half-written adapter

    # One MLflow run, from rank 0, finished, with the global throughput.
    runs = mlflow_runs(out)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run_ = runs[0]
    assert run_.info.status == "FINISHED" and run_.data.tags["mode"] == mode
    assert run_.data.metrics["train_cost/tokens_per_second"] == pytest.approx(prof["tokens_per_second"])
    assert run_.data.metrics["eval/exact_match"] == pytest.approx(results["eval"]["exact_match"])

    # One adapter, and it loads onto the base model.
    from peft import PeftModel

    from app.models.loading import load_model_and_processor

    adapters = [p.parent for p in out.rglob("adapter_config.json") if "checkpoint-" not in str(p)]
    assert adapters == [RunFiles(out).final_model(mode)]
    base, _ = load_model_and_processor(str(model_cache / "tiny-llava-ov15"), mode="baseline")
    model = PeftModel.from_pretrained(base, str(adapters[0]))
    assert any("lora_A" in n for n, _ in model.named_parameters())


@pytest.mark.slow
def test_two_process_baseline_equals_one_process(sample_dir, model_cache, tmp_path):
    """Questions sharded over 2 ranks (3 each, in batches of 2: a full one and a short one) and gathered: the same
    answers, the same metrics as one process (this one: in-process, the reference needs no process of its own)."""
    outs = {n: tmp_path / f"n{n}" for n in (1, 2)}
    res = ego_here("baseline", *sets(sample_dir, model_cache, outs[1]))
    assert res.returncode == 0, res.stderr[-3000:]
    res = torchrun("baseline", *sets(sample_dir, model_cache, outs[2]))
    assert res.returncode == 0, res.stderr[-3000:]
    folder = {n: RunFiles(out).baseline() for n, out in outs.items()}
    one, two = (json.loads(folder[n].results.read_text()) for n in (1, 2))
    # More questions than one batch on each rank: every rank runs more than one batch, the last one short.
    assert two["num_questions"] == one["num_questions"] == QUESTIONS and two["num_answered"] == one["num_answered"]
    for key in METRICS:
        assert two["metrics"][key] == one["metrics"][key], key
    assert two["metrics"]["accuracy_by_type"] == one["metrics"]["accuracy_by_type"]
    for key in ("answer_nll", "perplexity"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5), key

    rows = {n: [json.loads(line) for line in folder[n].predictions.open()] for n in (1, 2)}
    assert [r["key"] for r in rows[2]] == [r["key"] for r in rows[1]]  # gathered back into question order
    assert [r["prediction"] for r in rows[2]] == [r["prediction"] for r in rows[1]]
    assert any(r["prediction"] for r in rows[1])  # the tiny model says something: the comparison has teeth

    prof = {n: json.loads(folder[n].profiling.read_text()) for n in (1, 2)}
    assert prof[2]["world_size"] == 2 and len(prof[2]["per_rank"]) == 2
    assert prof[2]["generated_tokens"] == prof[1]["generated_tokens"] > 0
    assert prof[2]["num_samples"] == prof[1]["num_samples"] == one["num_questions"]
    assert prof[2]["generated_tokens_per_second"] > 0
    assert same_shape(shape(prof[2]), shape(prof[1])) == []
    assert not list(folder[2].folder.glob(".*partial*"))
    for out in outs.values():
        runs = mlflow_runs(out)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["mode"] == "baseline"
