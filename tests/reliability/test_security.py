"""Security: no remote code unless asked (and then tagged), safetensors only, no secrets in the store."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import REPO, TINY, ego_here, tiny_sets

from app.errors import UserError
from app.models.loading import load_model_and_processor, load_processor
from app.models.tiny import build_tiny_llava_ov15
from app.tracking.run import flatten, redact


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llava_ov15(tmp_path_factory.mktemp("models") / "tiny-llava-ov15", seed=0)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_checkpoint_code_runs_only_when_the_config_asks(tiny_dir, tmp_path):
    ckpt = _copy(tiny_dir, tmp_path / "ckpt")
    marker = tmp_path / "REMOTE_CODE_RAN"
    (ckpt / "custom_tok.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\nclass CustomTokenizer(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    tok_cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    tok_cfg.update(tokenizer_class="CustomTokenizer", auto_map={"AutoTokenizer": [None, "custom_tok.CustomTokenizer"]})
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tok_cfg))

    with pytest.raises(UserError, match="model.trust_remote_code=true") as err:
        load_processor(str(ckpt))
    assert str(ckpt) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists(), "checkpoint code ran although trust_remote_code is off"
    # The switch is the only thing that held it back.
    load_processor(str(ckpt), trust_remote_code=True)
    assert marker.exists()


class _Payload:
    """Unpickling this writes a file: what a malicious .bin checkpoint does with an unsafe torch.load."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled"))


def test_pickled_weights_are_never_loaded(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    ckpt = _copy(tiny_dir, tmp_path / "pickled")
    marker = tmp_path / "UNPICKLED"
    state = load_file(ckpt / "model.safetensors")
    torch.save({**state, "payload": _Payload(str(marker))}, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()

    with pytest.raises(UserError, match=r"no \*\.safetensors weights .*pytorch_model\.bin"):
        load_model_and_processor(str(ckpt))
    assert not marker.exists()


def test_adapter_without_safetensors_is_refused(sample_dir, model_cache, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path)}))
    torch.save({"w": torch.zeros(2)}, adapter / "adapter_model.bin")
    res = ego_here("evaluate", "--model", adapter, "--config", TINY,
                   *tiny_sets(sample_dir, model_cache, tmp_path / "out"))
    assert res.returncode == 1
    assert "no adapter_model.safetensors" in res.stderr and str(adapter) in res.stderr


def test_app_code_never_unpickles_or_enables_remote_code():
    offenders = []
    for path in (REPO / "app").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if ("torch.load(" in code and "weights_only=True" not in code) or re.search(r"\bpickle\.loads?\(", code) \
                    or "trust_remote_code=True" in code:
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_credentials_are_masked_in_params():
    params = flatten({"tracking": {"uri": "http://alice:s3cret@mlflow.corp:5000", "api_key": "k-123"},
                      "data": {"hf_token": "hf_abc", "data_path": "/data/x.json"}})
    assert params["tracking.uri"] == "http://***@mlflow.corp:5000"
    assert params["tracking.api_key"] == "***" and params["data.hf_token"] == "***"
    assert params["data.data_path"] == "/data/x.json"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


@pytest.mark.slow
def test_run_records_trust_remote_code_and_no_secret(sample_dir, model_cache, tmp_path, fresh_store, monkeypatch):
    """A real baseline run (in this process) with secrets in the environment: none of them reaches params, tags
    or artifacts."""
    from mlflow import MlflowClient

    secret = "hf_SECRET_do_not_log_5417"
    for name in ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, secret)
    res = ego_here("baseline", "--config", TINY, *tiny_sets(
        sample_dir, model_cache, tmp_path / "out", "model.trust_remote_code=true", "eval.max_samples=4",
        f"tracking.uri={fresh_store}"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "trust_remote_code=true" in res.stderr  # said out loud, not only tagged

    client = MlflowClient(fresh_store)
    (run,) = client.search_runs([client.get_experiment_by_name("ego4d-ft").experiment_id])  # the store is its own
    assert run.data.tags["trust_remote_code"] == "true"
    assert run.data.params["model.trust_remote_code"] == "True"
    everything = json.dumps([run.data.params, run.data.tags])
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    for f in artifacts.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".yaml", ".txt", ".jsonl", ".md"):
            everything += f.read_text(errors="replace")
    assert secret not in everything
    assert len(everything) > 1000  # the scan saw the run's params, tags and files
