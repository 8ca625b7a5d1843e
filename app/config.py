"""Typed configuration: YAML file + `--set key.sub=value` overrides, validated in one place.

Every default lives here. Errors are one line and name the key at fault:
  - unknown key  -> names the key and the keys allowed at that level
  - wrong type   -> names the key, the expected type and the value given
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import UserError

DEFAULT_CONFIG = Path("configs/training_config.yaml")


class ConfigError(UserError):
    """A one-line, user-facing configuration error."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name_or_path: str = "lmms-lab/LLaVA-OneVision-1.5-8B-Instruct"
    family: Literal["llava_ov15", "llava_onevision"] = "llava_ov15"
    # tiny: build a seeded random model of the same architecture into cache_dir (no download).
    tiny: bool = False
    # tiny only: the twin's vision-tower width. The demo uses a wider tower (its random patch embedding keeps more
    # of each patch, which shape questions need); the tests keep the fast default.
    tiny_vision_width: int = Field(32, gt=0, multiple_of=4)
    cache_dir: str = ".cache/ego4d-ft/models"
    torch_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    use_flash_attention: bool = True
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = True


class QuantizationConfig(_Section):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class LoraConfig(_Section):
    r: int = Field(64, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    train_merger: bool = False
    # Train lm_head in full too (PEFT modules_to_save, saved with the adapter). The tiny demo needs it: its random
    # head cannot be adapted through LoRA on the layers below alone. On the 8B it adds 622 M trainable parameters.
    train_lm_head: bool = False


class DataConfig(_Section):
    data_path: str = "data/FirstSight-Dataset/datasets/Ego4D/Ego4D.json"
    video_folder: str = "data/FirstSight-Dataset/Ego4d"
    # Audio paths in records are relative to audio_folder; null means the folder holding data_path.
    audio_folder: str | None = None
    video_ids_file: str | None = None
    # Held-out split: ids listed in eval_ids_file, else a deterministic eval_fraction of ids.
    eval_ids_file: str | None = None
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # Frames per clip, at the centres of equal time segments. With `fps` set instead: that many frames per
    # second of the clip, clamped to [min_frames, max_frames] (the model authors fine-tune at 1 fps).
    num_frames: int = Field(8, gt=0)
    fps: float | None = Field(None, gt=0)
    min_frames: int = Field(4, gt=0)
    max_frames: int = Field(32, gt=0)
    # Per-frame pixel budget: each clip keeps its aspect ratio (Qwen2-VL smart_resize, sides multiples of 28).
    min_pixels: int = Field(3136, gt=0)
    max_pixels: int = Field(448 * 448, gt=0)
    # A clip whose decodable span is below this share of its declared duration is refused as truncated.
    min_decodable_fraction: float = Field(0.9, gt=0.0, le=1.0)
    max_seq_len: int = Field(4096, gt=0)
    speech_strategy: Literal["drop", "transcript"] = "drop"
    transcripts_file: str | None = None
    asr_model: str | None = None
    check_decodable: bool = True
    # Decoded-frame cache (app/data/frame_cache.py): sampled, resized frames stored once, reused by later
    # epochs and runs. It never changes what the model sees, so these keys stay out of config_hash().
    frame_cache: bool = True
    frame_cache_dir: str = ".cache/ego4d-ft/frames"
    frame_cache_max_gb: float = Field(50.0, gt=0)

    @model_validator(mode="after")
    def _speech_needs_source(self) -> DataConfig:
        if self.speech_strategy == "transcript" and not (self.transcripts_file or self.asr_model):
            raise ValueError("data.speech_strategy=transcript needs data.transcripts_file or data.asr_model")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"data.min_pixels ({self.min_pixels}) exceeds data.max_pixels ({self.max_pixels})")
        if self.min_frames > self.max_frames:
            raise ValueError(f"data.min_frames ({self.min_frames}) exceeds data.max_frames ({self.max_frames})")
        return self


class TrainingConfig(_Section):
    num_epochs: int = Field(10, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    per_device_batch_size: int = Field(1, gt=0)
    gradient_accumulation_steps: int = Field(8, gt=0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    lr_scheduler: str = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    optimizer: str = "paged_adamw_8bit"
    save_steps: int = Field(200, gt=0)
    save_total_limit: int = Field(2, gt=0)
    logging_steps: int = Field(1, gt=0)
    dataloader_workers: int = Field(4, ge=0)
    # Batches each loader worker keeps ready (PyTorch's default 2 keeps the model fed: benchmarks/RESULTS.md P2).
    # Only used with workers; does not change results (not hashed).
    dataloader_prefetch: int = Field(2, gt=0)
    seed: int = 42


class EvalConfig(_Section):
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(32, gt=0)
    max_samples: int | None = Field(None, gt=0)


class TrackingConfig(_Section):
    uri: str | None = None
    experiment: str = "ego4d-ft"
    registered_model: str = "ego4d-llava-ov-qlora"
    enabled: bool = True


class Config(_Section):
    model: ModelConfig = ModelConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    output_dir: str = "results"
    use_cpu: bool = False

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        """Identifies what a run computes: where results go or how they are tracked does not change it."""
        content = {k: v for k, v in self.to_dict().items() if k not in ("output_dir", "tracking", "use_cpu")}
        for section, key in _NOT_HASHED:
            content[section].pop(key, None)
        blob = json.dumps(content, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# Keys that change speed or where files go, never what is computed (left out of config_hash, so turning the
# cache off or moving it does not orphan a resumable evaluation log).
_NOT_HASHED = (
    ("data", "frame_cache"), ("data", "frame_cache_dir"), ("data", "frame_cache_max_gb"),
    ("training", "dataloader_prefetch"),
)


# Keys that existed once: a config that still sets one is told what replaced it, not just "unknown key".
_REMOVED = {
    "data.frame_size": "data.frame_size was removed: frames keep their aspect ratio, sized per clip within "
                       "data.min_pixels .. data.max_pixels (e.g. max_pixels=200704 for about 448x448); delete it",
}


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Walk the schema along `loc` to list the keys allowed where the bad key was found."""
    cls: Any = model
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            break
        cls = field.annotation
    return sorted(cls.model_fields)


def _describe(err: dict, source: str) -> str:
    key = ".".join(str(p) for p in err["loc"])
    where = f"{source}: " if source else ""
    if err["type"] == "extra_forbidden" and key in _REMOVED:
        return f"{where}{_REMOVED[key]}"
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(Config, err["loc"]))
        return f"{where}unknown key '{key}' (allowed here: {allowed})"
    if err["type"] == "value_error":
        return f"{where}{err['msg'].removeprefix('Value error, ')}"
    given = err.get("input")
    return f"{where}key '{key}': {err['msg'].lower()}; got {given!r}"


def _validate(raw: dict[str, Any], source: str, final: bool = True) -> Config | None:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if not final:
            # Cross-key rules (value_error) wait for the last --set: two keys may only make sense together.
            errors = [e for e in errors if e["type"] != "value_error"]
            if not errors:
                return None
        # One line: the first problem is what the user fixes first; the count says there are more.
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], source) + more) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}': expected key.sub=value")
    key, value = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set '{item}': empty key")
    try:
        # YAML scalars: "3" -> 3, "true" -> True, "null" -> None, "[a, b]" -> list.
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML at `path` (default configs/training_config.yaml), apply `--set` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    _validate(raw, str(path), final=False)
    for item in overrides or []:
        parts, value = parse_override(item)
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
        _validate(raw, f"--set {item}", final=False)
    source = f"--set {' '.join(overrides)}" if overrides else str(path)
    return _validate(raw, source)

