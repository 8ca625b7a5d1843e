"""`--set` arguments that point a tiny CLI run at a sample set, a model cache and an output folder.

Importable from every test folder: the root conftest puts tests/ on sys.path.
"""

from __future__ import annotations

from pathlib import Path


def tiny_sets(sample: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    sets = [
        f"data.data_path={sample / 'Ego4D.json'}", f"data.video_folder={sample / 'videos'}",
        f"data.eval_ids_file={sample / 'eval_ids.txt'}", f"model.cache_dir={cache}", f"output_dir={out}",
        f"data.frame_cache_dir={cache / 'frames'}",
        "training.per_device_batch_size=4", *extra,
    ]
    return [a for s in sets for a in ("--set", s)]
