"""The adapter as a registered model: a logged (pyfunc) model holding the adapter folder as an artifact.

Measured traps this avoids: `mlflow.transformers.log_model` of a PEFT model on a local base reloads with
wrong weights, and `mlflow.register_model("runs:/…/dir")` fails in MLflow 3 unless the artifact is a logged
model. `evaluate --model models:/NAME@ALIAS` downloads the version and loads `artifacts/adapter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

from app.errors import UserError

ADAPTER_ARTIFACT = "adapter"


class AdapterPackage(mlflow.pyfunc.PythonModel):
    """A container for the PEFT adapter files; inference runs through `ego4d-ft evaluate`, which needs
    the video pipeline and the base model, neither of which belongs inside a pyfunc."""

    def predict(self, context, model_input: list[str], params=None) -> list[str]:  # noqa: ARG002
        raise RuntimeError("load this adapter with `ego4d-ft evaluate --model models:/NAME@ALIAS`")


# MLflow reserves the alias "latest" (`models:/NAME/latest` already means the newest version), so the alias we
# move is "newest", and `models:/NAME@latest` is read as `models:/NAME/latest`.
NEWEST_ALIAS = "newest"


def register_adapter(adapter_dir: Path, name: str, alias: str = NEWEST_ALIAS) -> dict[str, Any]:
    client = mlflow.MlflowClient()
    info = mlflow.pyfunc.log_model(
        name="adapter",
        python_model=AdapterPackage(),
        artifacts={ADAPTER_ARTIFACT: str(adapter_dir)},
        pip_requirements=["peft", "transformers", "torch"],  # explicit: skips slow requirement inference
        registered_model_name=name,
    )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    return {"name": name, "version": version, "alias": alias, "model_uri": info.model_uri}


def resolve_model_ref(ref: str, cfg) -> Path:
    """`models:/NAME/VERSION`, `models:/NAME@ALIAS` or `runs:/ID/PATH` → a local adapter folder."""
    import mlflow

    from app.tracking.run import check_reachable, tracking_uri

    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    if ref.startswith("models:/") and ref.lower().endswith("@latest"):
        ref = ref[: -len("@latest")] + "/latest"
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
    except Exception as exc:  # MLflow raises several types; the user needs the reference and the reason
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{ref}: cannot fetch from {uri} ({first})") from None
    # pyfunc keeps an artifact folder under artifacts/<its own name>; a runs:/ path may point at it directly.
    found = sorted(local.glob("adapter_config.json")) + sorted(local.glob("**/adapter_config.json"))
    if found:
        return found[0].parent
    raise UserError(f"{ref}: no adapter_config.json in the downloaded artifacts ({local})")
