"""Every pipeline is one MLflow run: where the store is, how a run starts and ends, what it is tagged with.

Default store: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/` (MLflow's file store is in
maintenance mode). `MLFLOW_TRACKING_URI` or `tracking.uri` points anywhere else, e.g. a shared
`mlflow server` on a cluster. Only rank 0 of a multi-process run talks to MLflow.

A run that raises ends FAILED; one stopped by Ctrl-C or SIGTERM (Slurm's preemption signal) ends KILLED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.config import Config
from app.errors import UserError

STORE_DIR = Path("mlruns")
SECRET_WORDS = ("token", "secret", "password", "key")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run can be closed as KILLED on the way out."""


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail in seconds, before any model loads, when an HTTP tracking server does not answer."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"tracking server {uri} unreachable ({exc.strerror or exc}); set tracking.uri") from None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif any(w in k.lower() for w in SECRET_WORDS) and v:
            out[key] = "***"  # never write credentials into a shared store
        else:
            out[key] = str(v)[:6000]
    return out


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        # Artifacts beside the database file, so a store is one self-contained folder.
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def mlflow_run(cfg: Config, mode: str, run_name: str | None = None, tags: dict[str, str] | None = None,
               log_system_metrics: bool = True) -> Iterator[Any]:
    """Start (or, off rank 0, pretend to start) a run; yields the active run or None."""
    if not cfg.tracking.enabled or not is_main_process():
        yield None
        return
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines would interleave with our bars
    uri = tracking_uri(cfg)
    check_reachable(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment_id = _experiment_id(client, cfg.tracking.experiment, uri)
    all_tags = {
        "mode": mode,
        "config_hash": cfg.config_hash(),
        "git_commit": _git_commit(),
        "model_name": cfg.model.name_or_path,
        "trust_remote_code": str(cfg.model.trust_remote_code).lower(),
        **(tags or {}),
    }
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"{mode}-{time.strftime('%Y%m%d-%H%M%S')}",
                           tags=all_tags, log_system_metrics=log_system_metrics)
    try:
        mlflow.log_params(flatten(cfg.to_dict()))
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.flush_async_logging()
        mlflow.end_run(status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)
