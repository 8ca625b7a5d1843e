"""`model inspect`: what the configured model costs, before any GPU hour is spent on it."""

from __future__ import annotations

from rich.table import Table

from app.config import Config
from app.console import console
from app.models.setup import model_path


def _longest_prompt_tokens(cfg: Config, path: str) -> tuple[int, str]:
    """Text tokens of the longest record (vision tokens are added by the inspector), or 0 with a reason."""
    from app.data.ego4d import DataError, load_records
    from app.models.loading import load_processor

    try:
        report = load_records(cfg.data)
    except DataError:
        return 0, "data not found"
    if not report.records:
        return 0, "no usable records"
    try:
        processor = load_processor(path, cfg.model.family)
    except OSError as exc:
        return 0, f"no tokenizer at {path} ({type(exc).__name__})"
    tok = processor.tokenizer
    longest = max(
        len(tok("\n".join(t.value for t in r.turns))["input_ids"]) + 6 * len(r.turns) for r in report.records
    )
    return longest, f"longest of {len(report.records)} records"


def _data_vision_tokens(cfg: Config) -> dict | None:
    """Vision tokens of each configured clip at its own geometry (min/mean/max), or None without data."""
    from app.data.ego4d import DataError, load_records
    from app.data.geometry import GRID_FACTOR, clip_plan
    from app.data.video import VideoError, probe_cached

    if cfg.model.family != "llava_ov15":
        return None  # llava_onevision resizes every frame to one square: the budget figure is exact
    try:
        report = load_records(cfg.data)
    except DataError:
        return None
    tokens = []
    for video in dict.fromkeys(r.video for r in report.records):
        try:
            frames, (h, w) = clip_plan(probe_cached(video, cfg.data.min_decodable_fraction), cfg.data)
        except VideoError:
            continue
        tokens.append(frames * (h // GRID_FACTOR) * (w // GRID_FACTOR))
    if not tokens:
        return None
    return {"clips": len(tokens), "min": min(tokens), "mean": sum(tokens) / len(tokens), "max": max(tokens)}


def inspect(cfg: Config, mode: str, meta: bool) -> dict:
    from app.models.inspect import inspect_model

    path = cfg.model.name_or_path if meta and not cfg.model.tiny else model_path(cfg.model)
    prompt_tokens, source = _longest_prompt_tokens(cfg, path)
    report = inspect_model(
        path,
        family=cfg.model.family,
        mode=mode,
        meta=meta,
        num_frames=cfg.data.num_frames,
        frame_size=None,  # the budget: the most tokens a frame can take (a square frame at max_pixels)
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
        prompt_tokens=prompt_tokens,
        lora_r=cfg.lora.r,
        train_merger=cfg.lora.train_merger,
        train_lm_head=cfg.lora.train_lm_head,
        compute_dtype=cfg.quantization.compute_dtype,
        torch_dtype=cfg.model.torch_dtype,
        batch_size=cfg.training.per_device_batch_size,
    )
    table = Table(title=f"{cfg.model.name_or_path} ({mode}{', meta device' if meta else ''})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("total parameters", f"{report['total_params']:,}"),
        ("trainable parameters", f"{report['trainable_params']:,} ({report['trainable_percent']}%)"),
        ("Linear4bit layers", str(report["linear4bit_layers"])),
        ("vision tokens per clip (budget)", f"{report['vision_tokens_per_clip']:,} ({report['num_frames']} frames "
         f"of at most {cfg.data.max_pixels:,} px)"),
        ("longest sequence (tokens)", f"{report['longest_sequence_tokens']:,} (text: {source})"),
    ]
    rows += [(f"memory: {k.removesuffix('_gib')}", f"{v} GiB") for k, v in report["memory_estimate"].items()]
    data_tokens = _data_vision_tokens(cfg)
    if data_tokens:
        report["vision_tokens_data"] = data_tokens
        spread = f"min {data_tokens['min']:,} / mean {data_tokens['mean']:,.0f} / max {data_tokens['max']:,}"
        rows.insert(4, ("vision tokens per clip (data)", f"{spread} over {data_tokens['clips']} clips"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"total_params={report['total_params']}", highlight=False)
    return report
