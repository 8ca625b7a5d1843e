"""The CLI as users run it: a real subprocess of the installed `ego4d-ft` script."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EGO = str(Path(sys.executable).parent / "ego4d-ft")
TINY = str(REPO / "configs" / "tiny_cpu.yaml")


def run(*args, cwd=REPO):
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps tables at the terminal width
    return subprocess.run([EGO, *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def test_help_lists_every_command():
    out = run("--help").stdout
    for cmd in ["baseline", "train", "evaluate", "compare", "data", "model", "ui"]:
        assert cmd in out
    assert "sample" in run("data", "--help").stdout and "validate" in run("data", "--help").stdout
    assert "inspect" in run("model", "--help").stdout


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
    res = run("data", "validate", "--config", TINY, "--set", "data.frames=8")
    assert res.returncode == 1
    assert "unknown key 'data.frames'" in res.stderr and "num_frames" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_missing_data_is_one_line_naming_the_file(tmp_path):
    res = run("data", "validate", "--config", TINY, "--set", f"data.data_path={tmp_path}/none.json")
    assert res.returncode == 1
    assert f"{tmp_path}/none.json" in res.stderr and "Traceback" not in res.stderr


def test_validate_counts_usable_and_skips(sample_dir, data_overrides, tmp_path):
    sets = [a for o in data_overrides for a in ("--set", o)]
    res = run("data", "validate", "--config", TINY, *sets)
    assert res.returncode == 0, res.stderr
    assert "usable: 12 of 12 records (train 10, held-out 2); skipped: 0" in res.stdout

    # One broken record among good ones: reported with its reason, exit stays 0.
    records = json.loads((sample_dir / "Ego4D.json").read_text())
    records.append({"id": "evil", "video": "../../etc/passwd", "conversations": records[0]["conversations"]})
    bad = tmp_path / "with_bad.json"
    bad.write_text(json.dumps(records))
    res = run("data", "validate", "--config", TINY, *sets, "--set", f"data.data_path={bad}")
    assert res.returncode == 0
    assert "usable: 12 of 13 records" in res.stdout and "skipped: 1" in res.stdout
    assert "path escapes its folder" in res.stdout and "evil" in res.stdout


def test_validate_exits_1_when_nothing_usable(sample_dir, data_overrides, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    sets = [a for o in data_overrides for a in ("--set", o)]
    res = run("data", "validate", "--config", TINY, *sets, "--set", f"data.data_path={empty}")
    assert res.returncode == 1
    assert "nothing usable" in res.stdout


def test_sample_40_clips_then_validate_reports_40_usable(tmp_path):
    from app.data.video import probe_video

    out = tmp_path / "s"
    res = run("data", "sample", "--out", str(out), "--clips", "40")
    assert res.returncode == 0, res.stderr
    clips = sorted((out / "videos").glob("*.mp4"))
    assert len(clips) == 40
    for clip in clips:
        info = probe_video(clip)
        assert info.num_frames == 16 and info.has_audio
    data = ["--set", f"data.data_path={out / 'Ego4D.json'}", "--set", f"data.video_folder={out / 'videos'}"]
    res = run("data", "validate", *data)
    assert res.returncode == 0, res.stderr
    assert "usable: 40 of 40 records" in res.stdout


def test_model_inspect_meta_counts_the_8b_architecture():
    res = run("model", "inspect", "--meta")
    assert res.returncode == 0, res.stderr
    total = int(res.stdout.split("total_params=")[1].split()[0])
    assert abs(total - 8.5e9) / 8.5e9 <= 0.005  # published: 8.5B total (model card table)
    assert "Linear4bit layers" in res.stdout


def test_model_inspect_tiny_with_sample_data(data_overrides, tmp_path):
    sets = [a for o in data_overrides for a in ("--set", o)]
    res = run("model", "inspect", "--config", TINY, *sets, "--set", f"model.cache_dir={tmp_path}", "--mode", "qlora")
    assert res.returncode == 0, res.stderr
    assert "longest of 12 records" in res.stdout
    # The budget (8 frames x at most 4 tokens at max_pixels 3136) and the data's own clips (56 px squares).
    assert "vision tokens per clip (budget)" in res.stdout and "32 (8 frames of at most 3,136 px)" in res.stdout
    assert "min 32 / mean 32 / max 32 over 12 clips" in res.stdout
    assert int(res.stdout.split("total_params=")[1].split()[0]) > 0


def test_baseline_and_evaluate_refuse_deepspeed_in_one_line_before_any_run(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for args in (["baseline"], ["evaluate", "--model", str(tmp_path)]):
        res = run(*args, "--config", TINY, "--deepspeed", str(REPO / "configs" / "deepspeed_zero3.json"),
                  "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / 'out'}")
        assert res.returncode == 1, res.stderr
        assert "evaluation does not run under DeepSpeed; drop --deepspeed" in res.stderr
        assert "torchrun --nproc_per_node N" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    mlflow.set_tracking_uri(uri)
    assert mlflow.search_runs(search_all_experiments=True).empty  # refused before a run was started
