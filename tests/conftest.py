"""Shared fixtures: real synthetic sample sets (H.264 mp4s with audio), a tiny-model cache, throwaway MLflow stores
and one trained adapter, each built once per session; and the check that a test run writes nothing into the
repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# rich sizes its tables from COLUMNS when its consoles are created; tests read words out of those tables, so every
# process (pytest-xdist workers have no terminal) gets the same, wide width.
os.environ["COLUMNS"] = "200"
# Kept between test sessions, outside the repository: DeepSpeed's ops compiled on first use, and hypothesis'
# example database (it would write .hypothesis/ into the current folder).
_KEEP = Path(tempfile.gettempdir()) / f"ego4d-ft-tests-{os.getuid()}"
os.environ["TORCH_EXTENSIONS_DIR"] = str(_KEEP / "torch_ext")
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(_KEEP / "hypothesis")
REPO = Path(__file__).resolve().parents[1]


def _repo_files() -> set[str]:
    """Paths git lists as untracked or ignored: what a test that writes into the repository leaves."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".", ":!.venv"],
                         cwd=REPO, capture_output=True, text=True)
    skip = ("__pycache__", ".pytest_cache", ".ruff_cache", ".venv/", "ego4d_ft.egg-info")
    return {line[3:] for line in out.stdout.splitlines()
            if line[:2] in ("??", "!!") and not any(part in line for part in skip)}


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) takes the snapshot
        config._repo_before = _repo_files()


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory) -> str:
    """One throwaway SQLite MLflow store for the session (inherited by every CLI subprocess), so tests never
    write into the project's own mlruns/."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture(scope="session")
def _store_template(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store with its tables made: creating them takes ~5 s, a copy a millisecond."""
    import mlflow

    db = tmp_path_factory.mktemp("store_template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def fresh_store(_store_template: Path, tmp_path: Path) -> str:
    """A store of this test's own (an empty copy of the template): it reads back only the runs it made."""
    db = tmp_path / "own-store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_store_template, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from app.data.synthetic import make_sample_set

    out = tmp_path_factory.mktemp("sample")
    make_sample_set(out, clips=12, seed=0, progress=False)
    return out


@pytest.fixture
def data_overrides(sample_dir: Path) -> list[str]:
    return [
        f"data.data_path={sample_dir / 'Ego4D.json'}",
        f"data.video_folder={sample_dir / 'videos'}",
        f"data.eval_ids_file={sample_dir / 'eval_ids.txt'}",
    ]


@pytest.fixture(scope="session")
def sample40(tmp_path_factory) -> Path:
    from app.data.synthetic import make_sample_set

    out = tmp_path_factory.mktemp("sample40")
    make_sample_set(out, clips=40, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def trained_qlora(sample40: Path, model_cache: Path, tmp_path_factory) -> Path:
    """One 1-epoch QLoRA run of the tiny twin on `sample40` (batch 4, 8 steps), shared by the tests that only read
    what it wrote: each extra `train` subprocess costs ~25 s of the suite's 15-minute budget. Returns output_dir."""
    from cli_helpers import TINY, ego_here, tiny_sets

    out = tmp_path_factory.mktemp("trained_qlora")
    res = ego_here("train", "--mode", "qlora", "--use-cpu", "--config", TINY,
                   *tiny_sets(sample40, model_cache, out, "training.num_epochs=1"))
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def tiny_asr(tmp_path_factory) -> Path:
    """A tiny random wav2vec2 CTC model, saved: what `<speech>` transcription runs through offline."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out = tmp_path_factory.mktemp("asr")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab |= {c: i + 5 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}
    (out / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, pad_token_id=0,
    )
    Wav2Vec2ForCTC(cfg).save_pretrained(out)
    processor = Wav2Vec2Processor(
        feature_extractor=Wav2Vec2FeatureExtractor(sampling_rate=16000),
        tokenizer=Wav2Vec2CTCTokenizer(str(out / "vocab.json")),
    )
    processor.save_pretrained(out)
    return out


# --- the bad-input corpus count (tests/reliability/test_bad_input_corpus.py), printed at the end of a run that
# collected it; with pytest-xdist the workers report their counts to the controller, which prints the sum. It lives
# here because the controller loads only this conftest.
_FROM_WORKERS = {"cases": 0, "checked": 0, "seen": False}


def _corpus():
    return sys.modules.get("test_bad_input_corpus") or sys.modules.get("tests.reliability.test_bad_input_corpus")


def pytest_sessionfinish(session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)  # set on pytest-xdist workers only
    corpus = _corpus()
    if workeroutput is not None and corpus is not None:
        workeroutput["bad_input_corpus"] = (len(corpus.CASES), len(corpus.CHECKED))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    counts = getattr(node, "workeroutput", {}).get("bad_input_corpus")
    if counts:
        _FROM_WORKERS["cases"] = max(_FROM_WORKERS["cases"], counts[0])
        _FROM_WORKERS["checked"] += counts[1]
        _FROM_WORKERS["seen"] = True


def pytest_terminal_summary(terminalreporter) -> None:
    before = getattr(terminalreporter.config, "_repo_before", None)
    if before is not None:
        written = sorted(_repo_files() - before)
        if written:
            terminalreporter.write_line(f"FAILED: the tests wrote into the repository: {', '.join(written[:10])}",
                                        red=True)
            terminalreporter._session.exitstatus = 1

    corpus = _corpus()
    if corpus is not None:
        cases, checked = len(corpus.CASES), len(corpus.CHECKED)
    elif _FROM_WORKERS["seen"]:
        cases, checked = _FROM_WORKERS["cases"], _FROM_WORKERS["checked"]
    else:
        return
    terminalreporter.write_line(f"bad-input corpus: {cases} cases, {checked} behaved as expected")
