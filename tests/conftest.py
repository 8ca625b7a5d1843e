"""Shared fixtures: a real synthetic sample set (H.264 mp4s with audio), built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# rich sizes its tables from COLUMNS when its consoles are created; tests read words out of those tables, so every
# process (pytest-xdist workers have no terminal) gets the same, wide width.
os.environ["COLUMNS"] = "200"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory) -> str:
    """One throwaway SQLite MLflow store for the session (inherited by every CLI subprocess), so tests never
    write into the project's own mlruns/."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


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
    import subprocess
    import sys

    from cli_helpers import tiny_sets

    out = tmp_path_factory.mktemp("trained_qlora")
    cmd = [str(Path(sys.executable).parent / "ego4d-ft"), "train", "--mode", "qlora", "--use-cpu",
           "--config", str(REPO / "configs" / "tiny_cpu.yaml"),
           *tiny_sets(sample40, model_cache, out, "training.num_epochs=1")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr[-2000:]
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
    corpus = _corpus()
    if corpus is not None:
        cases, checked = len(corpus.CASES), len(corpus.CHECKED)
    elif _FROM_WORKERS["seen"]:
        cases, checked = _FROM_WORKERS["cases"], _FROM_WORKERS["checked"]
    else:
        return
    terminalreporter.write_line(f"bad-input corpus: {cases} cases, {checked} behaved as expected")
