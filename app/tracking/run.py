"""Every pipeline is one MLflow run: where the store is, how a run starts and ends, what it is tagged with.

Default store: `sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/` (MLflow's file store is in
maintenance mode). `MLFLOW_TRACKING_URI` or `tracking.uri` points anywhere else, e.g. a shared
`mlflow server` on a cluster. Only rank 0 of a multi-process run talks to MLflow.

A run that raises ends FAILED; one stopped by Ctrl-C or SIGTERM (Slurm's preemption signal) ends KILLED.
A SIGKILLed process cannot close its run: each run is tagged with its host, pid and the process's start
time, and the next start on that host closes runs whose process is gone as KILLED.

Several trainings may share one SQLite store. Two measured failures are handled here: a fresh database
created by two processes at once (both run the schema migration: "duplicate column name") is created under
a file lock, and writes that meet "database is locked" are retried with backoff.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from app.config import Config
from app.distributed import is_main
from app.errors import UserError

STORE_DIR = Path("mlruns")
SECRET_WORDS = ("token", "secret", "password", "key")
RETRY_SECONDS = 120.0
T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run can be closed as KILLED on the way out."""


def tracking_uri(cfg: Config) -> str:
    if cfg.tracking.uri:
        return cfg.tracking.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail in seconds, before any model loads, when an HTTP tracking server does not answer.

    A TCP connect is not enough: a hung server accepts connections and never replies, and MLflow's own client
    would then retry for minutes. Any HTTP reply (even 404 from a proxy) counts as an answer.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    shown = redact(uri)
    try:
        netloc = parsed.netloc.rsplit("@", 1)[-1]  # credentials are MLflow's business, not the probe's
        probe = parsed._replace(netloc=netloc, path=parsed.path.rstrip("/") + "/health", query="", fragment="")
        urllib.request.urlopen(probe.geturl(), timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code not in (502, 503, 504):  # a gateway's "the server behind me is down" is no answer
            return
        raise UserError(f"tracking server {shown} unreachable (HTTP {exc.code}); set tracking.uri") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        reason = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
        raise UserError(f"tracking server {shown} unreachable ({reason}); set tracking.uri") from None


def retry_locked(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry a store write while SQLite says "database is locked" (another run holds the write lock)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if "database is locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    return wrapper


def redact(value: str) -> str:
    """`scheme://user:password@host` → `scheme://***@host`: URIs may carry credentials."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", value)


def _init_store(uri: str) -> None:
    """Create a fresh SQLite store's tables under a file lock: two processes migrating it at once both fail."""
    import mlflow

    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            retry_locked(mlflow.MlflowClient(uri).search_experiments)(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _process_started(pid: int) -> str | None:
    """The process's start time (pids are reused; a pid plus its start time is not), None when it is gone."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def close_orphaned_runs(client, experiment_id: str) -> list[str]:
    """Close as KILLED the RUNNING runs started on this host by processes that no longer exist."""
    host = socket.gethostname()
    runs = retry_locked(client.search_runs)(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`ego4d_ft.host` = '{host}'",
        max_results=200,
    )
    closed = []
    for run in runs:
        tags = run.data.tags
        try:
            pid = int(tags.get("ego4d_ft.pid", ""))
        except ValueError:
            continue
        if _process_started(pid) == tags.get("ego4d_ft.process_started"):
            continue  # still running, e.g. a concurrent training
        retry_locked(client.set_terminated)(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


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
            out[key] = redact(str(v))[:6000]
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
        return retry_locked(client.create_experiment)(name, artifact_location=artifact_location)
    except Exception:  # another process created it first
        return retry_locked(client.get_experiment_by_name)(name).experiment_id


@contextlib.contextmanager
def mlflow_run(cfg: Config, mode: str, run_name: str | None = None, tags: dict[str, str] | None = None,
               log_system_metrics: bool = True) -> Iterator[Any]:
    """Start (or, off rank 0, pretend to start) a run; yields the active run or None."""
    if not cfg.tracking.enabled or not is_main():
        yield None
        return
    import mlflow

    uri = tracking_uri(cfg)  # an HTTP server was found answering by the command's preflight
    _init_store(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment_id = _experiment_id(client, cfg.tracking.experiment, uri)
    for run_id in close_orphaned_runs(client, experiment_id):
        print(f"closed run {run_id} as KILLED: the process that ran it is gone", file=sys.stderr)
    all_tags = {
        "mode": mode,
        "config_hash": cfg.config_hash(),
        "git_commit": _git_commit(),
        "model_name": cfg.model.name_or_path,
        "trust_remote_code": str(cfg.model.trust_remote_code).lower(),
        "ego4d_ft.host": socket.gethostname(),
        "ego4d_ft.pid": str(os.getpid()),
        "ego4d_ft.process_started": _process_started(os.getpid()) or "",
        **(tags or {}),
    }
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    run = retry_locked(mlflow.start_run)(
        experiment_id=experiment_id, run_name=run_name or f"{mode}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags=all_tags, log_system_metrics=log_system_metrics,
    )
    end = retry_locked(mlflow.end_run)
    try:
        retry_locked(mlflow.log_params)(flatten(cfg.to_dict()))
        yield run
    except KeyboardInterrupt:
        end(status="KILLED")
        raise
    except BaseException:
        end(status="FAILED")
        raise
    else:
        mlflow.flush_async_logging()
        end(status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)
