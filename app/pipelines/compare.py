"""`compare`: the M0 baseline run against the M1 fine-tuned run, as a report and as a tracked run.

Recipe: find the two runs (defaults: the newest FINISHED `baseline` and `qlora` runs) → check they were scored
on the same held-out questions (refuse unless `allow_different_questions`) → fetch their metrics and
profiling artifacts → write report.md + report.html → print the table → log the report to MLflow.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from app.config import Config
from app.console import console
from app.errors import UserError
from app.preflight import preflight


def _find_run(client, experiment_id: str, run_id: str | None, mode: str):
    if run_id:
        try:
            return client.get_run(run_id)
        except Exception:
            raise UserError(f"run {run_id}: not found in the tracking store") from None
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mode = '{mode}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise UserError(f"no FINISHED {mode} run in the tracking store; run `ego4d-ft "
                        f"{'baseline' if mode == 'baseline' else 'train --mode ' + mode}` first")
    return runs[0]


def _artifact_json(client, run_id: str, name: str) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, name, tmp)
        except Exception:  # a run from an older version may lack it: the report says n/a
            return None
        return json.loads(Path(path).read_text())


def _summary(client, run, uri: str):
    from app.evaluation.metrics import EVAL_METRICS
    from app.report.summary import RunSummary

    m = run.data.metrics
    mode = run.data.tags.get("mode", "?")
    metrics = {k.removeprefix("eval/"): v for k, v in m.items() if k.removeprefix("eval/") in EVAL_METRICS}
    by_type = {k.removeprefix("eval/accuracy/"): v for k, v in m.items() if k.startswith("eval/accuracy/")}
    counts = {k.removeprefix("eval/count/"): int(v) for k, v in m.items() if k.startswith("eval/count/")}
    chance = {k.removeprefix("eval/chance/"): v for k, v in m.items() if k.startswith("eval/chance/")}
    if mode == "baseline":
        cost = _artifact_json(client, run.info.run_id, "baseline_profiling.json") or {}
        eval_cost = cost
    else:
        cost = _artifact_json(client, run.info.run_id, f"{mode}_profiling.json") or {}
        eval_cost = _artifact_json(client, run.info.run_id, f"{mode}_eval_profiling.json")
    url = None
    if uri.startswith("http"):
        url = f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return RunSummary(
        run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id, mode=mode, metrics=metrics,
        accuracy_by_type=by_type, count_by_type=counts, chance_by_type=chance, cost=cost, eval_cost=eval_cost,
        params=dict(run.data.params), url=url,
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    )


def compare(cfg: Config, baseline_run: str | None = None, candidate_run: str | None = None,
            out: Path | None = None, allow_different_questions: bool = False) -> dict[str, Any]:
    import mlflow
    from rich.markup import escape

    from app.quiet import quiet_third_party
    from app.report.compare import comparison_rows, print_table, write_report
    from app.report.questions import (
        different_questions_error,
        question_check,
        question_warnings,
        same_questions_line,
    )
    from app.tracking.run import mlflow_run, tracking_uri

    preflight(cfg, needs_store=True)
    quiet_third_party()
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is None:
        raise UserError(f"experiment {cfg.tracking.experiment!r} not found at {uri}; run baseline and train first")
    m0_run = _find_run(client, experiment.experiment_id, baseline_run, "baseline")
    m1_run = _find_run(client, experiment.experiment_id, candidate_run, "qlora")
    m0, m1 = _summary(client, m0_run, uri), _summary(client, m1_run, uri)
    check = question_check(m0, m1)
    if check["same"] is False and not allow_different_questions:
        raise UserError(different_questions_error(m0, m1))
    trained = _artifact_json(client, m1_run.info.run_id, "training_results.json") or {}
    losses = [(r["step"], r["loss"]) for r in trained.get("step_losses", [])]

    out = Path(out) if out else Path(cfg.output_dir) / "report"
    md, page = write_report(m0, m1, out, loss_curve=losses or None)
    rows = comparison_rows(m0, m1)
    print_table(rows, console)
    console.print(same_questions_line(check), highlight=False)
    for warning in question_warnings(m0, m1):  # word for word what the report says
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for label, run in (("M0", m0), ("M1", m1)):
        accs = ", ".join(f"{t} {a:.3f}" for t, a in sorted(run.accuracy_by_type.items())) or "n/a"
        if run.chance_by_type:
            accs += " (chance " + ", ".join(f"{t} {c:.2f}" for t, c in sorted(run.chance_by_type.items())) + ")"
        console.print(f"{label} ({run.mode}) held-out accuracy by question type: {accs}", highlight=False)
    console.print(f"report: {md} and {page}", highlight=False)

    same = {True: "yes", False: "no", None: "unknown"}[check["same"]]
    with mlflow_run(cfg, "compare", tags={"baseline_run": m0.run_id, "candidate_run": m1.run_id,
                                          "same_questions": same}, log_system_metrics=False):
        if mlflow.active_run() is not None:
            mlflow.log_artifacts(str(out), artifact_path="report")
            mlflow.log_metrics({f"delta/{r['metric']}".replace("[", "/").replace("]", ""): r["delta"]
                                for r in rows if isinstance(r.get("delta"), (int, float))})
    return {"report_md": str(md), "report_html": str(page), "rows": rows, "baseline_run": m0.run_id,
            "candidate_run": m1.run_id, "same_questions": same}


def ui(cfg: Config, port: int) -> None:
    """The MLflow UI on the project's store, bound to 127.0.0.1 (put a proxy in front to share it)."""
    import subprocess
    import sys

    from app.tracking.run import tracking_uri

    uri = tracking_uri(cfg)
    if uri.startswith("http"):
        console.print(f"the tracking store is a server already: open {uri}")
        return
    console.print(f"MLflow UI on http://127.0.0.1:{port} for {uri} (Ctrl-C stops it)", highlight=False)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port)]
    if uri.startswith("sqlite:///"):
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        cmd += ["--default-artifact-root", artifacts.resolve().as_uri()]
    try:
        subprocess.run(cmd, check=False)
    except KeyboardInterrupt:
        pass
