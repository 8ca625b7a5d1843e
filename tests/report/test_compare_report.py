"""M0-vs-M1 report: rendering only, no MLflow, no model. Runs in a few seconds."""

from __future__ import annotations

import base64
import io
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from app.report.compare import comparison_rows, print_table, write_report
from app.report.summary import RunSummary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GIB = 1024**3


def _region(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {"mean": sum(values) / len(values), "median": ordered[len(ordered) // 2],
            "p95": ordered[int(0.95 * (len(ordered) - 1))], "min": ordered[0], "max": ordered[-1],
            "count": len(values)}


def _eval_profile(rng: random.Random, batches: int, batch_s: float, gpu: bool) -> dict:
    batch = [rng.gauss(batch_s, batch_s * 0.1) for _ in range(batches)]
    return {
        "timer": "cuda_event" if gpu else "perf_counter", "device": "NVIDIA H100 80GB HBM3" if gpu else "cpu",
        "total_wall_seconds": sum(batch) + 4.2, "epoch_wall_seconds": [], "num_steps": batches,
        "tokens_per_second": 1850.5, "samples_per_second": 3.4,
        "peak_gpu_memory_bytes": int(21.3 * GIB) if gpu else None, "peak_host_rss_bytes": int(6.1 * GIB),
        "batch_seconds": _region(batch), "generate_seconds": _region([b * 0.8 for b in batch]),
        "score_seconds": _region([b * 0.15 for b in batch]), "data_wait_seconds": _region([0.01] * batches),
        "raw": {"steps": {"batch": batch, "generate": [b * 0.8 for b in batch]},
                "tokens": [1500] * batches, "samples": [4] * batches},
    }


def _train_profile(rng: random.Random, steps: int) -> dict:
    step = [rng.gauss(0.62, 0.05) for _ in range(steps)]
    return {
        "timer": "cuda_event", "device": "NVIDIA H100 80GB HBM3", "total_wall_seconds": sum(step) + 30.0,
        "epoch_wall_seconds": [sum(step) / 2, sum(step) / 2], "num_steps": steps,
        "tokens_per_second": 9120.0, "samples_per_second": 12.9,
        "peak_gpu_memory_bytes": int(34.7 * GIB), "peak_host_rss_bytes": int(9.4 * GIB),
        "step_seconds": _region(step), "forward_seconds": _region([s * 0.35 for s in step]),
        "backward_seconds": _region([s * 0.55 for s in step]), "optimizer_seconds": _region([0.03] * steps),
        "data_wait_seconds": _region([0.004] * steps),
        "raw": {"steps": {"step": step, "forward": [s * 0.35 for s in step]},
                "tokens": [5600] * steps, "samples": [8] * steps},
    }


@pytest.fixture
def runs() -> tuple[RunSummary, RunSummary]:
    rng = random.Random(0)
    tags = {"config_hash": "cfg-3a9f", "dataset_fingerprint": "ds-77e1c0", "model_name": "llava-ov-1.5-4b"}
    base_cost = _eval_profile(rng, 60, 0.9, gpu=True)
    m0 = RunSummary(
        run_id="0a1b2c3d4e", run_name="m0-baseline", mode="baseline",
        metrics={"exact_match": 0.41, "token_f1": 0.55, "rouge_l": 0.52, "bleu4": 0.18, "anls": 0.58,
                 "answer_nll": 2.31, "perplexity": 10.07},
        accuracy_by_type={"color": 0.62, "direction": 0.35, "shape": 0.48},
        cost=base_cost, eval_cost=base_cost, params={"model.name": "llava-ov-1.5-4b"},
        url="http://127.0.0.1:5000/#/experiments/1/runs/0a1b2c3d4e",
        tags={**tags, "mode": "baseline", "git_commit": "1111111"},
    )
    m1 = RunSummary(
        run_id="9f8e7d6c5b", run_name="m1-qlora", mode="qlora",
        metrics={"exact_match": 0.83, "token_f1": 0.88, "rouge_l": 0.87, "bleu4": 0.51, "anls": 0.89,
                 "answer_nll": 0.42, "perplexity": 1.52},
        accuracy_by_type={"color": 0.95, "direction": 0.90, "shape": 0.92},
        cost=_train_profile(rng, 120), eval_cost=_eval_profile(rng, 60, 0.7, gpu=True),
        params={"train.lr": "2e-4", "lora.r": "16"}, url="http://127.0.0.1:5000/#/experiments/1/runs/9f8e7d6c5b",
        tags={**tags, "mode": "qlora", "git_commit": "2222222"},
    )
    return m0, m1


def _data_images(page: str) -> list[bytes]:
    return [base64.b64decode(b64) for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_write_report_renders_self_contained_html_and_markdown(runs, tmp_path: Path) -> None:
    m0, m1 = runs
    md_path, html_path = write_report(m0, m1, tmp_path, loss_curve=[(i, 2.0 / (1 + 0.05 * i)) for i in range(1, 121)])
    assert md_path == tmp_path / "report.md" and html_path == tmp_path / "report.html"
    md, page = md_path.read_text(), html_path.read_text()

    images = _data_images(page)
    assert len(images) >= 3
    for png in images:
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as img:
            img.verify()  # raises on a truncated or corrupt PNG
    # Nothing is loaded from elsewhere: no external src, no stylesheet link, no CSS url(); <a href> is a link.
    assert not re.search(r'src\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "<link" not in page.lower() and "url(" not in page and "<script" not in page.lower()
    assert 'href="http://127.0.0.1:5000/#/experiments/1/runs/9f8e7d6c5b"' in page

    # The markdown links PNG files next to it instead of inlining them.
    assert "base64" not in md
    linked = re.findall(r"\]\((plots/[\w.]+\.png)\)", md)
    assert len(linked) == len(images) >= 3
    assert all((tmp_path / p).read_bytes().startswith(PNG_SIGNATURE) for p in linked)

    for text in (md, page):
        for qtype, m0_acc, m1_acc, delta in (("color", "0.6200", "0.9500", "+0.3300"),
                                             ("direction", "0.3500", "0.9000", "+0.5500"),
                                             ("shape", "0.4800", "0.9200", "+0.4400")):
            assert f"accuracy[{qtype}]" in text
            assert m0_acc in text and m1_acc in text and delta in text
        assert "-8.5500" in text  # perplexity delta
        assert "34.70" in text and "21.30" in text  # peak GPU memory in GiB
        assert "cuda_event" in text
        assert "not like for like" not in text  # same dataset fingerprint: no warning
    assert not list(tmp_path.rglob(".*"))  # no temp files left behind by the atomic writes
    assert html_path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's default 0600


def test_comparison_rows_direction_of_better(runs) -> None:
    m0, m1 = runs
    rows = {r["metric"]: r for r in comparison_rows(m0, m1)}
    assert rows["perplexity"]["better"] == "M1"  # lower perplexity wins
    assert rows["answer_nll"]["better"] == "M1"
    assert rows["perplexity"]["delta"] == pytest.approx(1.52 - 10.07)
    assert rows["exact_match"]["better"] == "M1"
    assert rows["accuracy[direction]"]["delta"] == pytest.approx(0.55)
    assert [r for r in rows if r.startswith("accuracy[")] == [f"accuracy[{t}]" for t in ("color", "direction", "shape")]

    m1.metrics["perplexity"] = 12.0  # now worse than M0
    m1.metrics["anls"] = m0.metrics["anls"]
    rows = {r["metric"]: r for r in comparison_rows(m0, m1)}
    assert rows["perplexity"]["better"] == "M0"
    assert rows["anls"]["better"] == "="


def test_missing_cost_fields_render_na(runs, tmp_path: Path) -> None:
    m0, m1 = runs
    write_report(m0, m1, tmp_path)  # a full report first: its step-time plot must not survive the rewrite
    assert (tmp_path / "plots" / "step_times.png").exists()
    # A CPU run whose profile lost most of its fields, and a candidate evaluated without a profile at all.
    m0.cost = m0.eval_cost = {"device": "cpu", "peak_gpu_memory_bytes": None, "tokens_per_second": None}
    m1.cost, m1.eval_cost = {}, None
    del m1.metrics["bleu4"]
    md_path, html_path = write_report(m0, m1, tmp_path)
    for text in (md_path.read_text(), html_path.read_text()):
        assert "n/a (CPU)" in text
        assert "n/a" in text
    rows = {r["metric"]: r for r in comparison_rows(m0, m1)}
    assert rows["bleu4"]["m1"] is None and rows["bleu4"]["delta"] is None
    # No step timings anywhere: the histogram is left out, the bar charts still render.
    assert len(_data_images(html_path.read_text())) == 2
    assert not (tmp_path / "plots" / "step_times.png").exists()


def test_differing_dataset_fingerprints_warn(runs, tmp_path: Path) -> None:
    m0, m1 = runs
    m1.tags["dataset_fingerprint"] = "ds-different"
    md_path, html_path = write_report(m0, m1, tmp_path)
    for text in (md_path.read_text(), html_path.read_text()):
        assert "not like for like" in text
        assert "ds-77e1c0" in text and "ds-different" in text


def test_run_name_is_escaped(runs, tmp_path: Path) -> None:
    m0, m1 = runs
    m1.run_name = '<script>alert("x")</script>'
    m1.url = "javascript:alert(1)"  # not a web link: must not become a clickable href
    md_path, html_path = write_report(m0, m1, tmp_path, title="M0 & <M1>")
    page = html_path.read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page  # Jinja2's autoescape spells " as &#34;
    assert "<title>M0 &amp; &lt;M1&gt;</title>" in page
    assert "javascript:" not in page
    assert "<script" not in md_path.read_text().lower()


def test_script_in_questions_tags_and_types_is_escaped(runs, tmp_path: Path) -> None:
    """Tag values, question types and metric names come from MLflow too: none of them may reach the page raw."""
    m0, m1 = runs
    payload = "<script>alert(1)</script>"
    _questions(m0, 16, payload, skipped=2)
    _questions(m1, 16, "bbbb2222")
    m1.tags["dataset_fingerprint"] = f"ds-{payload}"
    m1.accuracy_by_type[f"why {payload}"] = 0.5
    m1.metrics[f"custom {payload}"] = 0.7
    m1.url = f"https://example.org/runs?x={payload}"  # a web link, so it is kept, but escaped inside href
    md_path, html_path = write_report(m0, m1, tmp_path)
    page = html_path.read_text()
    assert "<script" not in page.lower()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"hash {escaped}" in page  # the question-hash warning and the same-questions line
    assert f"<td>scored questions hash</td><td>{escaped}</td>" in page
    assert f"ds-{escaped}" in page and f"accuracy[why {escaped}]" in page and f"custom {escaped}" in page
    assert f'href="https://example.org/runs?x={escaped}"' in page
    assert "<script" not in md_path.read_text().lower()


def test_print_table(runs) -> None:
    from rich.console import Console

    console = Console(record=True, width=120)
    print_table(comparison_rows(*runs), console=console)
    out = console.export_text()
    assert "perplexity" in out and "accuracy[shape]" in out and "-8.5500" in out and "M1" in out


def _questions(run: RunSummary, scored: int, qhash: str, skipped: int = 0, held_out_records: int = 0) -> None:
    run.tags.update({"eval_questions": str(scored), "eval_questions_hash": qhash,
                     "eval_questions_skipped": str(skipped), "skipped_held_out": str(held_out_records)})


def test_report_states_the_questions_and_skips_of_both_runs(runs, tmp_path: Path) -> None:
    m0, m1 = runs
    _questions(m0, 16, "aaaa1111", skipped=2, held_out_records=2)
    _questions(m1, 16, "aaaa1111", skipped=2, held_out_records=1)
    md_path, html_path = write_report(m0, m1, tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    assert "Held-out questions scored: M0 16, M1 16; same questions: yes." in md
    assert "| held-out records skipped while loading | 2 | 1 |" in md
    assert "| held-out questions skipped | 2 | 2 |" in md
    assert "same questions: yes" in page
    assert "<td>held-out records skipped while loading</td><td>2</td><td>1</td>" in page
    assert "Warning" not in md and 'class="warn"' not in page


def test_report_warns_when_questions_differ_or_cannot_be_checked(runs, tmp_path: Path) -> None:
    from app.report.questions import different_questions_error

    m0, m1 = runs
    md = write_report(m0, m1, tmp_path / "old")[0].read_text()  # runs made before the tags existed
    assert "same questions: unknown" in md and "cannot be checked" in md

    _questions(m0, 16, "aaaa1111", skipped=2, held_out_records=2)
    _questions(m1, 18, "bbbb2222")
    for path in write_report(m0, m1, tmp_path / "new"):
        text = path.read_text()
        assert "same questions: no" in text and "scored on different held-out questions" in text
        assert "aaaa1111" in text and "bbbb2222" in text
    error = different_questions_error(m0, m1)
    assert "\n" not in error and "M0 16 questions, hash aaaa1111" in error and "M1 18 questions, hash bbbb2222" in error
    assert m0.run_id in error and m1.run_id in error and "--allow-different-questions" in error


def _red_pixels(png: bytes) -> int:
    """Pixels of the chance line's red (#d62728), blended with the bars it crosses."""
    import numpy as np

    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 150) & (g < 100) & (b < 100)).sum())


def test_accuracy_per_type_shows_chance_and_question_counts(runs, tmp_path: Path) -> None:
    m0, m1 = runs
    for run in runs:
        run.count_by_type = {"color": 66, "direction": 66, "shape": 66}
        run.chance_by_type = {"color": 0.258, "direction": 0.258, "shape": 0.273}
    m1.count_by_type = {**m1.count_by_type, "shape": 65}  # a question M1 could not score
    md_path, html_path = write_report(m0, m1, tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    assert "| metric | questions | chance | M0 | M1 | delta (M1-M0) | better |" in md
    assert "| accuracy[color] | 66 | 0.258 | 0.6200 | 0.9500 | +0.3300 | M1 |" in md
    assert "| accuracy[shape] | 66 / 65 | 0.273 |" in md  # the two sides differ: both are shown
    assert "most common answer" in md and "most common answer" in page
    assert "<td>66 / 65</td><td>0.273</td>" in page

    with_chance = (tmp_path / "plots" / "accuracy_by_type.png").read_bytes()
    for run in runs:
        run.chance_by_type = {}
    write_report(m0, m1, tmp_path / "without")
    without = (tmp_path / "without" / "plots" / "accuracy_by_type.png").read_bytes()
    assert _red_pixels(with_chance) > 100 and _red_pixels(without) == 0  # the dashed chance line is drawn
    assert "| accuracy[color] | 66 | n/a |" in (tmp_path / "without" / "report.md").read_text()
