"""Keep third-party chatter out of the user's terminal: our own progress bars and one-line notes say
what matters. Real errors still surface as exceptions."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_third_party() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked loader workers + tokenizers threads
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow sets its loggers' level from this when it is imported, after the setLevel below if it comes later.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*kernels.*")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("DeepSpeed", "deepspeed", "accelerate", "peft", "bitsandbytes", "mlflow"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        # DeepSpeed sets its logger's level again when it is imported (later, by accelerate), and then warned
        # "Setting accelerator to CPU" in every CPU training; a filter stays on the logger.
        if _errors_only not in logger.filters:
            logger.addFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR
