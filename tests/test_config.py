from pathlib import Path

import pytest

from app.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"
FULL = REPO / "configs" / "training_config.yaml"


def test_shipped_configs_load_with_guide_defaults():
    full = load_config(FULL)
    assert full.model.name_or_path == "lmms-lab/LLaVA-OneVision-1.5-8B-Instruct"
    assert full.data.data_path == "data/FirstSight-Dataset/datasets/Ego4D/Ego4D.json"
    assert full.data.video_folder == "data/FirstSight-Dataset/Ego4d"
    assert full.data.video_ids_file is None
    assert full.training.num_epochs == 10
    assert full.model.use_flash_attention is True
    assert full.model.trust_remote_code is False
    assert full.output_dir == "results"
    tiny = load_config(TINY)
    assert tiny.model.tiny and tiny.use_cpu
    assert tiny.model.family == full.model.family == "llava_ov15"


def test_override_is_applied_and_typed():
    cfg = load_config(TINY, ["training.num_epochs=1", "lora.train_merger=false", "eval.max_samples=5"])
    assert cfg.training.num_epochs == 1
    assert cfg.lora.train_merger is False
    assert cfg.eval.max_samples == 5


def test_config_hash_changes_with_content():
    assert load_config(TINY).config_hash() == load_config(TINY).config_hash()
    assert load_config(TINY).config_hash() != load_config(TINY, ["training.seed=1"]).config_hash()


def _one_line_error(*args) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(*args)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_key_in_file_names_key_and_allowed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  num_epoch: 3\n")
    msg = _one_line_error(bad)
    assert str(bad) in msg
    assert "training.num_epoch" in msg
    assert "num_epochs" in msg and "learning_rate" in msg  # the allowed keys at that level


def test_wrong_type_names_key_expected_and_value(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  num_epochs: ten\n")
    msg = _one_line_error(bad)
    assert "training.num_epochs" in msg and "integer" in msg and "'ten'" in msg


def test_negative_epochs_rejected():
    msg = _one_line_error(TINY, ["training.num_epochs=-1"])
    assert "training.num_epochs" in msg and "greater than 0" in msg and "-1" in msg


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.fsp=3", ["--set data.fsp=3", "unknown key 'data.fsp'", "num_frames"]),
        ("data.frame_size=448", ["data.frame_size was removed", "aspect ratio", "data.max_pixels"]),
        ("nosuch.key=1", ["unknown key 'nosuch'", "training"]),
        ("lora.r=abc", ["lora.r", "integer", "'abc'"]),
        ("model.family=llama", ["model.family", "llava_ov15", "'llama'"]),
        ("training", ["expected key.sub=value"]),
        ("data.speech_strategy=transcript", ["transcripts_file"]),
    ],
)
def test_bad_set_override_is_one_line(override, words):
    msg = _one_line_error(TINY, [override])
    for w in words:
        assert w in msg


def test_missing_or_invalid_file(tmp_path):
    assert "config file not found" in _one_line_error(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    assert "mapping" in _one_line_error(listy)
