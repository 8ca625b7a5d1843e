"""Per-step metrics reach MLflow in batches, every step of them, in the run they belong to."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from app.tracking.log import StepLogger


def test_batched_step_metrics_all_arrive_in_their_own_run(tracking_store):
    logger = StepLogger(every_steps=7, every_seconds=3600)
    mlflow.set_experiment("step-logger")
    with mlflow.start_run() as first:
        for step in range(1, 24):  # 3 full batches and a partial one left for flush()
            logger(step, {"loss": 1.0 / step, "skipped": float("nan"), "flag": True})
        with mlflow.start_run(nested=True) as second:
            logger(1, {"loss": 9.0})  # switching runs sends the first run's pending rows there
        logger.flush()
    client = MlflowClient()
    history = client.get_metric_history(first.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 24))
    assert {m.step: m.value for m in history}[4] == 0.25
    assert client.get_metric_history(first.info.run_id, "train/skipped") == []
    assert [m.value for m in client.get_metric_history(second.info.run_id, "train/loss")] == [9.0]
