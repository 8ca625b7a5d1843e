"""The adapter as a registered model: a logged (pyfunc) model holding the adapter folder as an artifact.

Measured traps this avoids: `mlflow.transformers.log_model` of a PEFT model on a local base reloads with
wrong weights, and `mlflow.register_model("runs:/…/dir")` fails in MLflow 3 unless the artifact is a logged
model. `evaluate --model models:/NAME@ALIAS` downloads the version and loads `artifacts/adapter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow.entities import LoggedModelStatus, Run
from mlflow.entities.model_registry import ModelVersion

from app.errors import UserError
from app.io import one_line

ADAPTER_ARTIFACT = "adapter"  # the adapter folder's name inside the logged model's artifacts
LOGGED_MODEL_NAME = "adapter"  # the logged model's name within its run


class AdapterPackage(mlflow.pyfunc.PythonModel):
    """A container for the PEFT adapter files; inference runs through `ego4d-ft evaluate`, which needs
    the video pipeline and the base model, neither of which belongs inside a pyfunc."""

    def predict(self, context, model_input: list[str], params=None) -> list[str]:  # noqa: ARG002
        raise RuntimeError("load this adapter with `ego4d-ft evaluate --model models:/NAME@ALIAS`")


# MLflow reserves the alias "latest" (`models:/NAME/latest` already means the newest version), so the alias we
# move is "newest", and `models:/NAME@latest` is read as `models:/NAME/latest`.
NEWEST_ALIAS = "newest"


# Tag on the logged model and on the version: which adapter folder they hold. With the version's own run_id it
# identifies "this run's registration of this adapter", which a retry looks for before creating anything.
ADAPTER_DIR_TAG = "ego4d_ft.adapter_dir"


def _logged_adapter(client: mlflow.MlflowClient, run: Run, adapter_dir: str) -> str:
    """The run's READY logged model holding `adapter_dir` (logging it if there is none yet); returns its URI."""
    found = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{LOGGED_MODEL_NAME}'")
    for model in found:
        # A PENDING or FAILED one is what an interrupted log_model left behind: not a usable model.
        if model.status == LoggedModelStatus.READY and model.tags.get(ADAPTER_DIR_TAG) == adapter_dir:
            return model.model_uri
    info = mlflow.pyfunc.log_model(
        name=LOGGED_MODEL_NAME,
        python_model=AdapterPackage(),
        artifacts={ADAPTER_ARTIFACT: adapter_dir},
        pip_requirements=["peft", "transformers", "torch"],  # explicit: skips slow requirement inference
        tags={ADAPTER_DIR_TAG: adapter_dir},
    )
    return info.model_uri


def _run_version(client: mlflow.MlflowClient, name: str, run_id: str, adapter_dir: str) -> ModelVersion | None:
    # Filter on run_id only: it is a hex id, safe to quote, while a model name may hold any character.
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if version.name == name and version.tags.get(ADAPTER_DIR_TAG) == adapter_dir:
            return version
    return None


def _version_for_run(client: mlflow.MlflowClient, name: str, run: Run, adapter_dir: str) -> ModelVersion:
    """This run's version of `name`, created only if no earlier attempt already made it."""
    version = _run_version(client, name, run.info.run_id, adapter_dir)
    if version is None:
        model_uri = _logged_adapter(client, run, adapter_dir)
        # The search runs again on every retry_locked attempt, so a create that committed before its
        # "database is locked" error is found instead of being made twice.
        version = mlflow.register_model(model_uri, name, tags={ADAPTER_DIR_TAG: adapter_dir})
    return version


def register_adapter(adapter_dir: Path, name: str, alias: str = NEWEST_ALIAS) -> dict[str, Any]:
    """Register the active run's adapter as a version of `name` and point `alias` at it.

    Safe to call again for the same run and adapter (a retry, or a rerun of the step): it reuses the logged model
    and the version an earlier call made, so one run yields one version, and only the alias is set again.
    """
    from app.tracking.run import retry_locked

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_adapter needs an active MLflow run to log the adapter into")
    client = mlflow.MlflowClient()
    folder = str(Path(adapter_dir).resolve())
    version = retry_locked(_version_for_run)(client, name, run, folder)
    retry_locked(client.set_registered_model_alias)(name, alias, version.version)
    return {"name": name, "version": str(version.version), "alias": alias, "model_uri": version.source}


def resolve_model_ref(ref: str, cfg) -> Path:
    """`models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/ID/PATH` → a local adapter folder."""
    from app.tracking.run import tracking_uri

    uri = tracking_uri(cfg)  # the command's preflight checked an HTTP server answers
    mlflow.set_tracking_uri(uri)
    if ref.startswith("models:/") and ref.lower().endswith("@latest"):
        ref = ref[: -len("@latest")] + "/latest"
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
    except Exception as exc:  # MLflow raises several types; the user needs the reference and the reason
        raise UserError(f"{ref}: cannot fetch from {uri} ({one_line(exc)})") from None
    # pyfunc keeps an artifact folder under artifacts/<its own name>; a runs:/ path may point at it directly.
    found = sorted(local.glob("adapter_config.json")) + sorted(local.glob("**/adapter_config.json"))
    # A merged model (`export --register`) is a plain checkpoint: its config.json beside safetensors weights.
    found += [c for c in sorted(local.glob("**/config.json")) if any(c.parent.glob("*.safetensors"))]
    if found:
        return found[0].parent
    raise UserError(f"{ref}: no adapter_config.json or merged model in the downloaded artifacts ({local})")
