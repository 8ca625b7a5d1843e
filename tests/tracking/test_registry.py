"""Registering the adapter against a real SQLite MLflow store: a repeated registration must not add a version."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from app.tracking.registry import ADAPTER_DIR_TAG, NEWEST_ALIAS, register_adapter


@pytest.fixture
def store(tracking_store: str, tmp_path: Path):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_store)
    client = mlflow.MlflowClient()
    # Artifacts under tmp_path: a SQLite store's default artifact root is ./mlruns in the working directory.
    experiment_id = client.create_experiment(f"registry-{uuid.uuid4().hex[:8]}",
                                             artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        yield client, experiment_id
    finally:
        mlflow.set_tracking_uri(previous)


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_model.safetensors").write_bytes(b"not really weights")
    return folder


def test_registering_again_for_the_same_run_reuses_the_version(store, tmp_path: Path) -> None:
    import mlflow

    client, experiment_id = store
    adapter = _adapter(tmp_path / "adapter")
    name = f"retry-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run(experiment_id=experiment_id) as run:
        first = register_adapter(adapter, name)
        # What retry_locked does after a "database is locked" that came once the version was already created.
        second = register_adapter(adapter, name)

    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 1
    assert first == second and first["version"] == str(versions[0].version) == "1"
    assert versions[0].run_id == run.info.run_id
    assert versions[0].tags[ADAPTER_DIR_TAG] == str(adapter.resolve())
    assert str(client.get_model_version_by_alias(name, NEWEST_ALIAS).version) == "1"
    logged = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert len(logged) == 1  # the adapter was logged once, not once per call
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{NEWEST_ALIAS}"))
    assert [p.name for p in local.glob("**/adapter_config.json")] == ["adapter_config.json"]

    # Another run is a new registration, not a retry: it gets its own version and the alias moves to it.
    with mlflow.start_run(experiment_id=experiment_id):
        third = register_adapter(adapter, name)
    assert third["version"] == "2"
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    assert str(client.get_model_version_by_alias(name, NEWEST_ALIAS).version) == "2"
