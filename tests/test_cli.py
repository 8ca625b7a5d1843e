"""The CLI itself (app/cli.py): its commands, `--help` without heavy imports, and errors as one line, exit 1.
Each command's recipe is tested in tests/pipelines/."""

import subprocess
import sys

from cli_helpers import REPO, TINY, ego, ego_here


def test_help_lists_every_command():
    out = ego("--help").stdout  # the installed script, as users first run it
    for cmd in ["baseline", "train", "evaluate", "compare", "data", "model", "ui"]:
        assert cmd in out
    data_help = ego_here("data", "--help").stdout
    assert "sample" in data_help and "validate" in data_help
    assert "inspect" in ego_here("model", "--help").stdout


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from typer.testing import CliRunner; from app.cli import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('torch', 'transformers', 'decord', 'mlflow', 'peft') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bad_override_is_one_line_exit_1_no_traceback():
    res = ego_here("data", "validate", "--config", TINY, "--set", "data.frames=8")
    assert res.returncode == 1
    assert "unknown key 'data.frames'" in res.stderr and "num_frames" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr + res.stdout


def test_missing_data_is_one_line_naming_the_file(tmp_path):
    res = ego_here("data", "validate", "--config", TINY, "--set", f"data.data_path={tmp_path}/none.json")
    assert res.returncode == 1
    assert f"{tmp_path}/none.json" in res.stderr and "Traceback" not in res.stderr
