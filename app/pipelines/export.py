"""`export`: the fine-tuned adapter merged into its full-precision base, as a plain checkpoint to ship.

Recipe: preflight → resolve the model reference (adapter folder, `models:/NAME/VERSION`, `models:/NAME@ALIAS`) →
one MLflow run tagged with the source → merge into the base in `model.torch_dtype` (`app.models.export`) →
`--register`: the merged folder becomes a version of `<tracking.registered_model>-merged`. Merging the 8B needs
its bf16 weights in host memory (~17 GB), no GPU.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from app.config import Config
from app.console import console
from app.errors import UserError
from app.preflight import preflight


def export(cfg: Config, model_ref: str, out: Path, register: bool = False) -> dict[str, Any]:
    from app.models.export import merge_adapter
    from app.quiet import quiet_third_party
    from app.tracking import log as track
    from app.tracking.run import mlflow_run

    registry = model_ref.startswith(("models:/", "runs:/"))
    preflight(cfg, needs_store=registry or register)
    quiet_third_party()
    if registry:
        from app.tracking.registry import resolve_model_ref

        adapter = resolve_model_ref(model_ref, cfg)
    else:
        adapter = Path(model_ref)
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"--model {model_ref}: not an adapter folder (no adapter_config.json)")
    out = Path(out).resolve()
    if out == adapter.resolve() or adapter.resolve() in out.parents:
        raise UserError(f"--out {out}: inside the adapter folder; choose a folder of its own")
    with mlflow_run(cfg, "export", tags={"source_model": model_ref}):
        started = time.perf_counter()
        info = merge_adapter(cfg, adapter, out)
        seconds = time.perf_counter() - started
        track.set_tags({"merged_from": info["merged_from"], "base_model": info["base_model"]})
        track.log_summary({"export/seconds": seconds, "export/bytes": float(info["bytes"])})
        console.print(f"merged {model_ref} into {info['base_model']} ({info['torch_dtype']}): {out} "
                      f"({info['bytes'] / 1e6:.1f} MB, {seconds:.1f} s)", highlight=False)
        if register:
            reg = track.register_merged(out, cfg)
            if reg:
                info["registered_model"] = reg
                console.print(f"registered {reg['name']} version {reg['version']} (alias {reg['alias']})")
            else:
                console.print("[yellow]--register: tracking is off (tracking.enabled=false); nothing registered[/]")
    return info
