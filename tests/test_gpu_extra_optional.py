"""Issue #15 part 5: flash-attn is the optional `gpu` extra; off CUDA nothing imports it and the fallback is said once.

A stand-in `flash_attn` package on the path makes "was it imported?" observable on a machine where the real one
cannot be installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ModelConfig
from app.models import setup

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fake_flash_attn(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "_NOTES_GIVEN", set())
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(body: str = "") -> Path:
        (tmp_path / "flash_attn").mkdir(exist_ok=True)
        (tmp_path / "flash_attn" / "__init__.py").write_text(body)
        sys.modules.pop("flash_attn", None)
        return tmp_path

    yield make
    # A stand-in left in sys.modules would make transformers' find_spec("flash_attn") see flash-attn in later tests.
    sys.modules.pop("flash_attn", None)


def test_gpu_extra_declares_flash_attn_and_dependencies_do_not():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("flash-attn") for dep in project["optional-dependencies"]["gpu"])
    assert not any("flash" in dep for dep in project["dependencies"])


def test_cli_pipelines_and_loading_do_not_import_flash_attn(fake_flash_attn):
    path = fake_flash_attn()
    code = (
        "import sys; import app.cli, app.pipelines.train, app.models.loading;"
        "from app.config import ModelConfig; from app.models.setup import attention_implementation;"
        "print(attention_implementation(ModelConfig(use_flash_attention=True), on_cuda=False));"
        "print('flash_attn' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["('sdpa', 'FlashAttention asked for, but not on CUDA: using sdpa')", "False"]


def test_fallback_is_said_once(fake_flash_attn):
    fake_flash_attn()
    cfg = ModelConfig(use_flash_attention=True)
    assert setup.attention_implementation(cfg, on_cuda=False) == ("sdpa", "FlashAttention asked for, but not on "
                                                                  "CUDA: using sdpa")
    assert setup.attention_implementation(cfg, on_cuda=False) == ("sdpa", None)
    assert "flash_attn" not in sys.modules
    assert setup.attention_implementation(ModelConfig(use_flash_attention=False), on_cuda=True) == ("sdpa", None)


def test_on_cuda_flash_attn_is_used_when_it_imports_and_explained_when_not(fake_flash_attn):
    fake_flash_attn()
    cfg = ModelConfig(use_flash_attention=True)
    assert setup.attention_implementation(cfg, on_cuda=True) == ("flash_attention_2", None)
    fake_flash_attn("raise OSError('undefined symbol: _ZN3c10')\n")  # a wheel built for another torch
    attn, note = setup.attention_implementation(cfg, on_cuda=True)
    assert attn == "sdpa" and "flash-attn failed to import (OSError: undefined symbol" in note
