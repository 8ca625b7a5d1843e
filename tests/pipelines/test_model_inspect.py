"""`ego4d-ft model inspect` (app/pipelines/model.py): parameters, 4-bit layers and vision tokens, before any GPU
hour is spent. The 8B on the meta device runs as users run it (the installed script's end-to-end `model`); the
tiny model with sample data runs in this process (`ego_here`)."""

from __future__ import annotations

from cli_helpers import TINY, ego, ego_here, tiny_sets


def test_model_inspect_meta_counts_the_8b_architecture(tmp_path):
    # The default config (the 8B), its data pointed away from whatever data/ this checkout holds.
    res = ego("model", "inspect", "--meta", "--set", f"data.data_path={tmp_path / 'none.json'}")
    assert res.returncode == 0, res.stderr
    total = int(res.stdout.split("total_params=")[1].split()[0])
    assert abs(total - 8.5e9) / 8.5e9 <= 0.005  # published: 8.5B total (model card table)
    assert "Linear4bit layers" in res.stdout


def test_model_inspect_tiny_with_sample_data(sample_dir, model_cache, tmp_path):
    res = ego_here("model", "inspect", "--config", TINY, *tiny_sets(sample_dir, model_cache, tmp_path),
                   "--mode", "qlora")
    assert res.returncode == 0, res.stderr
    assert "longest of 12 records" in res.stdout
    # The budget (8 frames x at most 4 tokens at max_pixels 3136) and the data's own clips (56 px squares).
    assert "vision tokens per clip (budget)" in res.stdout and "32 (8 frames of at most 3,136 px)" in res.stdout
    assert "min 32 / mean 32 / max 32 over 12 clips" in res.stdout
    assert int(res.stdout.split("total_params=")[1].split()[0]) > 0
