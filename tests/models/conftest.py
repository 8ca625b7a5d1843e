"""Session fixtures: the tiny LLaVA-OneVision-1.5 twin is built once into a tmp cache and shared."""

from __future__ import annotations

import pytest
import torch

from app.models.llava_ov15 import LlavaOV15ForConditionalGeneration, LlavaOV15Processor
from app.models.tiny import build_tiny_llava_onevision, build_tiny_llava_ov15


@pytest.fixture(scope="session")
def tiny_ov15_dir(tmp_path_factory):
    return build_tiny_llava_ov15(tmp_path_factory.mktemp("models") / "tiny-llava-ov15", seed=0)


@pytest.fixture(scope="session")
def tiny_onevision_dir(tmp_path_factory):
    return build_tiny_llava_onevision(tmp_path_factory.mktemp("models") / "tiny-llava-onevision", seed=0)


@pytest.fixture(scope="session")
def tiny_ov15(tiny_ov15_dir):
    model = LlavaOV15ForConditionalGeneration.from_pretrained(tiny_ov15_dir, dtype=torch.float32).eval()
    return model, LlavaOV15Processor.from_pretrained(tiny_ov15_dir)
