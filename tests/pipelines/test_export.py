"""`export`: the adapter merged into its full-precision base is base + scale * B @ A, saved in the hub layout,
reloads as a plain model, and answers the held-out questions as the adapter on that same base does."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import TINY, ego_here, tiny_sets
from safetensors import safe_open

from app.run_files import RunFiles

LAYER = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def exported(trained_qlora, sample40, model_cache, tmp_path_factory, _store_template):
    import shutil

    out = tmp_path_factory.mktemp("export") / "merged"
    store = out.parent / "mlflow.db"
    shutil.copy(_store_template, store)
    res = ego_here("export", "--model", RunFiles(trained_qlora).final_model("qlora"), "--out", out, "--register",
                   "--config", TINY, *tiny_sets(sample40, model_cache, tmp_path_factory.mktemp("export_out"),
                                                f"tracking.uri=sqlite:///{store}"))
    assert res.returncode == 0, res.stderr
    return out, res, f"sqlite:///{store}"


def _tensors(folder, *names):
    out = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys() if k in names})
    return out


def test_merged_weights_are_base_plus_scaled_lora_in_the_hub_layout(exported, trained_qlora, model_cache):
    out, res, _ = exported
    adapter = RunFiles(trained_qlora).final_model("qlora")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llavaonevision1_5"
    assert {"tokenizer.json", "chat_template.jinja", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    merged = _tensors(out, LAYER)
    keys = set()
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            keys |= set(f.keys())
    assert {k.split(".")[0] for k in keys} == {"visual", "model", "lm_head"} and not any("lora" in k for k in keys)
    base = _tensors(model_cache / "tiny-llava-ov15", LAYER)[LAYER]
    lora = _tensors(adapter, f"base_model.model.{LAYER[:-len('.weight')]}.lora_A.weight",
                    f"base_model.model.{LAYER[:-len('.weight')]}.lora_B.weight")
    a, b = (lora[k] for k in sorted(lora))  # lora_A, lora_B
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    expected = base + (cfg["lora_alpha"] / cfg["r"]) * (b @ a)
    assert not torch.equal(expected, base)  # the adapter did change this layer
    torch.testing.assert_close(merged[LAYER], expected, atol=1e-6, rtol=0)
    assert "merged" in res.stdout and json.loads((out / "ego4d_ft.json").read_text())["adapter_mode"] == "qlora"


def test_merged_model_answers_as_the_adapter_on_the_same_full_precision_base(exported, trained_qlora, sample40,
                                                                              model_cache):
    from peft import PeftModel

    from app.config import load_config
    from app.data.ego4d import load_records
    from app.evaluation.generate import eval_items, evaluate_items
    from app.models.setup import load_model
    from app.profiler import Profiler

    out, _, _ = exported
    cfg = load_config(TINY, [a for a in tiny_sets(sample40, model_cache, out.parent) if a != "--set"])
    items = eval_items(load_records(cfg.data).eval)[:6]

    def rows(model, processor):
        got: list[dict] = []
        evaluate_items(model, processor, items, cfg.data, 3, cfg.eval.max_new_tokens, Profiler("x", use_cuda=False),
                       on_batch=got.extend, on_skip=lambda *_: None)
        return got

    base, processor, _ = load_model(cfg, "baseline", say=lambda _: None)
    with_adapter = rows(PeftModel.from_pretrained(base, str(RunFiles(trained_qlora).final_model("qlora"))), processor)
    merged_model, merged_processor, _ = load_model(cfg, "baseline", path=str(out), say=lambda _: None)
    merged = rows(merged_model, merged_processor)
    assert [r["prediction"] for r in merged] == [r["prediction"] for r in with_adapter]
    for m, a in zip(merged, with_adapter, strict=True):
        assert m["answer_nll"] == pytest.approx(a["answer_nll"], abs=1e-3)


def test_export_is_a_tracked_run_and_registers_the_merged_model(exported, trained_qlora):
    import mlflow

    out, _, store = exported
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("ego4d-ft").experiment_id])
    assert run.data.tags["mode"] == "export" and run.info.status == "FINISHED"
    assert run.data.tags["source_model"] == str(RunFiles(trained_qlora).final_model("qlora"))
    version = client.get_model_version_by_alias("ego4d-llava-ov-qlora-merged", "newest")
    assert version.run_id == run.info.run_id


def test_evaluate_takes_the_exported_folder(exported, sample40, model_cache, tmp_path):
    out, _, _ = exported
    res = ego_here("evaluate", "--model", out, "--use-cpu", "--config", TINY,
                   *tiny_sets(sample40, model_cache, tmp_path, "eval.max_samples=4"))
    assert res.returncode == 0, res.stderr
    results = json.loads(RunFiles(tmp_path).evaluate(str(out)).results.read_text())
    assert results["mode"] == "merged" and results["num_answered"] == 4


def test_a_model_over_the_shard_size_is_sharded_with_an_index_and_reloads(trained_qlora, sample40, model_cache,
                                                                          tmp_path):
    from app.config import load_config
    from app.models.export import merge_adapter
    from app.models.llava_ov15 import LlavaOV15ForConditionalGeneration

    cfg = load_config(TINY, [a for a in tiny_sets(sample40, model_cache, tmp_path) if a != "--set"])
    out = tmp_path / "sharded"
    merge_adapter(cfg, RunFiles(trained_qlora).final_model("qlora"), out, max_shard_size="300KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
    model = LlavaOV15ForConditionalGeneration.from_pretrained(out)
    assert model.config.model_type == "llavaonevision1_5"
