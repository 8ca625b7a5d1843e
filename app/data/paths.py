"""Where a record's files are: paths confined to their folder, matched across Unicode normal forms.

A JSON written on Linux usually holds NFC names while macOS (and archives made there) store NFD on disk; the two
look identical in a terminal, so a name is matched in either form before it is called missing. Every match is
confined again: a spelling never lets a path leave its folder.
"""

from __future__ import annotations

import os
import unicodedata
from functools import lru_cache
from pathlib import Path, PurePosixPath


def confined(folder: Path, relative: str) -> Path | None:
    """Resolve `relative` inside `folder`; None when it escapes (../, absolute path, symlink out)."""
    root = folder.resolve()
    target = (folder / relative).resolve()
    return target if target.is_relative_to(root) else None


@lru_cache(maxsize=256)
def _nfc_listing(folder: str, mtime_ns: int) -> dict[str, str]:
    # Keyed on the folder's mtime, so a file added later is seen; one listing serves every lookup in a big folder.
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    return {unicodedata.normalize("NFC", n): n for n in names}


def _match_by_listing(folder: Path, relative: str) -> str | None:
    """`relative` with each name that does not exist replaced by the entry of its folder equal to it in NFC."""
    current, parts = folder, []
    for part in PurePosixPath(relative).parts:
        if part not in (".", "..") and not (current / part).exists():
            try:
                listing = _nfc_listing(str(current), current.stat().st_mtime_ns)
            except OSError:
                return None
            part = listing.get(unicodedata.normalize("NFC", part))
            if part is None:
                return None
        current = current / part
        parts.append(part)
    return str(PurePosixPath(*parts)) if parts else None


def locate(folder: Path, relative: str) -> Path | None:
    """`confined(folder, relative)`, tolerant of Unicode normalisation: when that is not a file, the NFC and NFD
    spellings of `relative` are tried, then each name is matched by NFC against its folder's listing. Returns the
    file found, else the path as given (missing); None when the path, or the spelling that matched, escapes."""
    target = confined(folder, relative)
    if target is None or target.is_file() or relative.isascii():
        return target
    spellings = [unicodedata.normalize(form, relative) for form in ("NFC", "NFD")]
    for spelling in [*(s for s in spellings if s != relative), _match_by_listing(folder, relative)]:
        if spelling is not None and (folder / spelling).is_file():
            return confined(folder, spelling)  # another spelling must stay inside the folder just the same
    return target


def derive_id(video: str) -> str:
    """An id for a record that has none: its video path as written, without the extension, in NFC
    (`ego4d/0219ad48.mp4` -> `ego4d/0219ad48`): readable, and stable while the file's name is."""
    path = PurePosixPath(unicodedata.normalize("NFC", video.strip()))
    return str(path.with_suffix("")) if path.name else str(path)
