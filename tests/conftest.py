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
from collections.abc import Callable
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
# pytest-xdist workers share the cores: each torch process's OpenMP pool defaults to every core, and 3 workers on
# 2 cores then spin-wait against each other. Measured here (2026-12-02): pytest 7 min 59 s -> 5 min 55 s, CPU time
# 14.0 -> 10.1 min. Subprocesses inherit it; a value the user set is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))
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


def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A session fixture's folder built by the first pytest-xdist worker that asks, under a file lock, and reused
    by the others (pytest-xdist's documented recipe: the workers' temp folders share one parent)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    out, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # what a failed build left
            out.mkdir()
            build(out)
            done.touch()
    return out


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

    def build(out: Path) -> None:
        import mlflow

        mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_experiments(max_results=1)

    return _built_once(tmp_path_factory, "store_template", build) / "mlflow.db"


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

    return _built_once(tmp_path_factory, "sample", lambda out: make_sample_set(out, clips=12, seed=0, progress=False))


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

    return _built_once(tmp_path_factory, "sample40", lambda out: make_sample_set(out, clips=40, seed=0, progress=False))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """The tiny twin and the frame cache, shared by every worker (both are written atomically)."""
    return _built_once(tmp_path_factory, "models", lambda out: None)


@pytest.fixture(scope="session")
def trained_qlora(sample40: Path, model_cache: Path, tmp_path_factory) -> Path:
    """One 1-epoch QLoRA run of the tiny twin on `sample40` (batch 4, 8 steps), shared by the tests that only read
    what it wrote, in every worker (~40 s a training). Its MLflow run is in the store of the worker that trained it:
    the tests read its files. Returns output_dir."""
    from cli_helpers import TINY, ego_here, tiny_sets

    def build(out: Path) -> None:
        res = ego_here("train", "--mode", "qlora", "--use-cpu", "--config", TINY,
                       *tiny_sets(sample40, model_cache, out, "training.num_epochs=1"))
        assert res.returncode == 0, res.stderr[-2000:]

    return _built_once(tmp_path_factory, "trained_qlora", build)


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

    # The corpus cases that ran here (not those collected and deselected, e.g. under `-m learning`).
    ran = sum(1 for key, reports in terminalreporter.stats.items() if key != "deselected" for report in reports
              if "test_bad_input_corpus.py::" in getattr(report, "nodeid", "")
              and getattr(report, "when", "") == "call")
    corpus = _corpus()
    if not ran:
        return
    if corpus is not None:
        cases, checked = len(corpus.CASES), len(corpus.CHECKED)
    elif _FROM_WORKERS["seen"]:
        cases, checked = _FROM_WORKERS["cases"], _FROM_WORKERS["checked"]
    else:
        return
    terminalreporter.write_line(f"bad-input corpus: {ran} of {cases} cases run, {checked} behaved as expected")
