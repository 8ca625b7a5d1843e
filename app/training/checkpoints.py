"""What training leaves on disk: Trainer checkpoints to resume from, and the final adapter, written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from app.console import console
from app.io import replace_dir
from app.run_files import ADAPTER_META


def checkpoint_complete(folder: Path) -> bool:
    """The Trainer writes a checkpoint in place (weights, optimizer, RNG, then trainer_state.json last and not
    atomically): complete means that last file parses and weights are there. A process killed mid-save leaves
    a folder that fails this."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and "global_step" in state and any(folder.glob("*.safetensors"))


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones (a kill during their save) are removed, said once each."""
    def step(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    steps = sorted((p for p in folder.glob("checkpoint-*") if step(p) >= 0), key=step)
    done = [p for p in steps if checkpoint_complete(p)]
    for p in steps:
        if p not in done:
            console.print(f"[yellow]removing incomplete checkpoint {p} (its save was interrupted)[/]", highlight=False)
            shutil.rmtree(p, ignore_errors=True)
    return done[-1] if done else None


def save_final_adapter(trainer, processor, final_dir: Path, meta: dict[str, Any]) -> Path:
    """Write beside, then rename: a reader sees the old adapter or the new one, never half of one.

    Every rank calls this: under ZeRO-3 the Trainer gathers the sharded LoRA weights collectively; only
    the main process writes and renames.
    """
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if not trainer.is_world_process_zero():
        return final_dir
    processor.save_pretrained(tmp)
    (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")  # how to load it back
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing of ours reads it
    return replace_dir(tmp, final_dir)
