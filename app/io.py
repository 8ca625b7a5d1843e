"""Writing files so that a reader never sees half of one, and turning library errors into one readable line."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"  # in every temp file's name, so a cache sweep can tell (and remove) abandoned ones


def write_atomic(path: Path, content: str | bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write `content` (text, bytes, or a function that writes to a binary file) beside `path`, then rename.

    The temp name is unique per process and call, so concurrent writers (ranks, parallel runs sharing a cache)
    each replace whole files and the last one wins. On error nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def replace_dir(new: Path, final: Path) -> Path:
    """Move the finished folder `new` to `final`, replacing what is there: a reader sees the old folder or the new
    one. (Two renames, so a crash between them leaves `final` missing and `.{name}.old` beside it, never a mix.)"""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


_NATIVE_PREFIX = re.compile(r"(?:\[[\d:]+\]\s*)?\S+\.(?:cc|cpp|c|h):\d+:\s*")


def one_line(error: BaseException | object) -> str:
    """The first non-empty line of an error (its OS reason when it has one), without the `[hh:mm:ss] src/x.cc:NN:`
    prefixes native decoders put in their exception text: a user-facing message is one line of words."""
    is_exc = isinstance(error, BaseException)
    text = (getattr(error, "strerror", None) or str(error)) if is_exc else str(error)
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    return _NATIVE_PREFIX.sub("", line).strip() or (type(error).__name__ if is_exc else "")
