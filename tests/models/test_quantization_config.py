"""quantization.quant_type and quantization.double_quant reach bitsandbytes: read off the layers that loaded."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest

from app.config import load_config
from app.models.setup import load_model

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", True), ("fp4", False)])
def test_quantisation_keys_reach_the_loaded_4bit_layers(model_cache, quant_type, double_quant):
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", [
        f"model.cache_dir={model_cache}", f"quantization.quant_type={quant_type}",
        f"quantization.double_quant={str(double_quant).lower()}",
    ])
    model, _, _ = load_model(cfg, "qlora", say=lambda _: None)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers, "no 4-bit layer loaded"
    states = [layer.weight.quant_state for layer in layers]
    assert {s.quant_type for s in states} == {quant_type}
    assert {bool(s.nested) for s in states} == {double_quant}  # nested: the absmax constants quantised again
