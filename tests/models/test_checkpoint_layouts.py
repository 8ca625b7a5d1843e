"""Issue #15 part 6: the hub layout and the transformers-integration layout (PR #48896) load alike; saving writes hub.

The tiny twin (hub layout: ``visual.*``, ``model.*``, ``lm_head.*``, model_type ``llavaonevision1_5``) is rewritten
into the integration's layout: keys ``model.visual.*`` / ``model.language_model.*`` / ``lm_head.*``, model_type
``llava_onevision1_5``, ``rope_parameters`` in the text config, ``out_hidden_size`` and the window-attention keys in
the vision config. Two revisions of that PR are covered: class tokens as plain parameters with the merger's
``mlp.0``/``mlp.2``, and class tokens as ``nn.Embedding(1, ...)`` weights with its conversion script's
``linear_fc1``/``linear_fc2``. Both must give the original's weights and logits, with no flag, through the same
``load_model_and_processor`` (fp32 and 4-bit), and ``save_pretrained`` must write the hub layout back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from clip_factory import encode
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from app.config import DataConfig
from app.data.conversation import encode_for_training
from app.data.ego4d import Record, Turn
from app.data.frame_cache import load_clip
from app.data.padding import PaddingCollator
from app.models.llava_ov15 import LlavaOV15Config, LlavaOV15ForConditionalGeneration
from app.models.loading import load_model_and_processor

REVISIONS = ("parameters", "embeddings")
DATA = DataConfig(num_frames=4, min_pixels=784, max_pixels=6272, frame_cache=False)


def to_integration_layout(src: Path, dst: Path, revision: str) -> Path:
    """Rewrite a hub-layout checkpoint as transformers PR #48896 stores it (`revision`: see the module docstring)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    tensors = {}
    for key, value in load_file(str(src / "model.safetensors")).items():
        if key.startswith("visual."):
            key = "model.visual." + key.removeprefix("visual.")
        elif key.startswith("model."):
            key = "model.language_model." + key.removeprefix("model.")
        if revision == "embeddings":
            if key in ("model.visual.class_embedding", "model.visual.class_pos_emb"):
                key, value = key + ".weight", value.reshape(1, -1)  # nn.Embedding(1, dim).weight
            key = key.replace("visual.merger.mlp.0.", "visual.merger.linear_fc1.")
            key = key.replace("visual.merger.mlp.2.", "visual.merger.linear_fc2.")
        tensors[key] = value.contiguous()
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})

    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "llava_onevision1_5"
    config["architectures"] = ["LlavaOnevision1_5ForConditionalGeneration"]
    text = config["text_config"]
    theta = text.pop("rope_theta", None) or (text.get("rope_parameters") or {})["rope_theta"]
    text.pop("rope_scaling", None)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    text["model_type"] = "qwen3"
    vision = config["vision_config"]
    vision["out_hidden_size"] = vision.pop("text_hidden_size")
    vision.pop("embed_dim", None)
    vision.update(model_type="llava_onevision1_5", window_size=112, fullatt_block_indexes=[], tokens_per_second=4,
                  attention_dropout=0.0)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, tiny_ov15_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {"hub": Path(tiny_ov15_dir),
            **{rev: to_integration_layout(Path(tiny_ov15_dir), root / rev, rev) for rev in REVISIONS}}


@pytest.fixture(scope="module")
def video_batch(tmp_path_factory, tiny_ov15_dir) -> dict[str, torch.Tensor]:
    """Two real clips (landscape, portrait) decoded and collated as training does: padding, per-clip grids, labels."""
    folder = tmp_path_factory.mktemp("layout-clips")
    _, processor = load_model_and_processor(str(tiny_ov15_dir), min_pixels=DATA.min_pixels,
                                            max_pixels=DATA.max_pixels)
    samples = []
    for name, (width, height), answer in (("wide", (160, 96), "red"), ("tall", (90, 160), "a blue ball")):
        encode(folder / f"{name}.mp4", frames=8, width=width, height=height)
        record = Record(name, folder / f"{name}.mp4", [Turn("human", "<video>\nWhat is it?"), Turn("gpt", answer)],
                        split="eval")
        samples.append(encode_for_training(record, load_clip(record.video, DATA), processor))
    batch = PaddingCollator(processor.tokenizer.pad_token_id)(samples)
    batch.pop("index", None)
    assert len({tuple(g) for g in batch["video_grid_thw"].tolist()}) == 2 and (batch["attention_mask"] == 0).any()
    return batch


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits.float()


def test_converted_checkpoint_really_is_the_integration_layout(layouts):
    with safe_open(str(layouts["embeddings"] / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.visual.class_embedding.weight").get_shape()[0] == 1
    assert {".".join(k.split(".")[:2]) for k in keys} == {"model.visual", "model.language_model", "lm_head.weight"}
    assert "model.visual.merger.linear_fc1.weight" in keys
    config = json.loads((layouts["embeddings"] / "config.json").read_text())
    assert config["model_type"] == "llava_onevision1_5" and "rope_theta" not in config["text_config"]
    assert "out_hidden_size" in config["vision_config"] and "text_hidden_size" not in config["vision_config"]


def test_auto_config_reads_the_integration_model_type_as_ours(layouts):
    config = AutoConfig.from_pretrained(layouts["embeddings"])
    assert isinstance(config, LlavaOV15Config) and config.model_type == "llavaonevision1_5"
    assert config.to_dict()["model_type"] == "llavaonevision1_5"
    assert config.vision_config.text_hidden_size == config.text_config.hidden_size


@pytest.mark.parametrize("revision", REVISIONS)
def test_integration_layout_loads_same_weights_and_logits(layouts, video_batch, revision):
    reference, _ = load_model_and_processor(str(layouts["hub"]), torch_dtype="float32")
    model, processor = load_model_and_processor(str(layouts[revision]), torch_dtype="float32")
    assert model.config.model_type == "llavaonevision1_5"
    assert model.config.vision_config.text_hidden_size == reference.config.vision_config.text_hidden_size
    assert model.config.text_config.rope_parameters == reference.config.text_config.rope_parameters
    ours, theirs = reference.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # a key left unloaded would be random here
    torch.testing.assert_close(_logits(model, video_batch), _logits(reference, video_batch), rtol=0, atol=1e-6)
    with torch.no_grad():
        assert float(model(**video_batch).loss) == pytest.approx(float(reference(**video_batch).loss), abs=1e-6)

    _, info = LlavaOV15ForConditionalGeneration.from_pretrained(layouts[revision], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_integration_layout_loads_in_lora_mode_bf16(layouts):
    reference, _ = load_model_and_processor(str(layouts["hub"]), mode="lora", torch_dtype="bfloat16")
    model, _ = load_model_and_processor(str(layouts["embeddings"]), mode="lora", torch_dtype="bfloat16")
    ours, theirs = reference.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.visual.class_embedding.dtype == torch.bfloat16


def test_integration_layout_loads_in_4bit(layouts, video_batch):
    import bitsandbytes as bnb

    reference, _ = load_model_and_processor(str(layouts["hub"]), mode="qlora", compute_dtype="float32")
    model, _ = load_model_and_processor(str(layouts["embeddings"]), mode="qlora", compute_dtype="float32")
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == sum(
        isinstance(m, bnb.nn.Linear4bit) for m in reference.modules()) > 0
    torch.testing.assert_close(_logits(model, video_batch), _logits(reference, video_batch), rtol=0, atol=1e-5)


def test_save_pretrained_writes_the_hub_layout(layouts, video_batch, tmp_path):
    model, _ = load_model_and_processor(str(layouts["embeddings"]), torch_dtype="float32")
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("visual.class_embedding").get_shape() == [model.config.vision_config.hidden_size]
    with safe_open(str(layouts["hub"] / "model.safetensors"), "pt") as f:
        assert keys == set(f.keys())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llavaonevision1_5"
    assert config["vision_config"]["text_hidden_size"] == model.config.text_config.hidden_size
    assert not {"out_hidden_size", "window_size", "fullatt_block_indexes"} & config["vision_config"].keys()

    again = LlavaOV15ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(again, video_batch), _logits(model, video_batch), rtol=0, atol=0)
