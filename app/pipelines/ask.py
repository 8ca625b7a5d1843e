"""`ask`: one question about one clip, answered by the base model or a fine-tuned adapter, streamed as it comes.

Recipe: the question as a record → the clip's frames, sampled and sized exactly as training and evaluation sample
them (`load_clip`) → `<speech>` resolved as in training → the model (`base`, an adapter folder, or a registry
reference) → greedy generation through the evaluation's own `answer` (same chat template, same stopping rule),
streamed to the terminal → load time and seconds per answer. `--base-too` answers with the adapter switched off
first, from the same loaded weights.
"""

from __future__ import annotations

import time
from pathlib import Path

from app.config import Config
from app.console import console
from app.errors import UserError

BASE = "base"


def _record(video: Path, question: str, audio: Path | None, cfg: Config):
    """The question as a one-turn record; `<speech>` dropped or transcribed as `data.speech_strategy` says."""
    from app.data.ego4d import SPEECH_TOKEN, VISION_TOKENS, Record, Turn, _apply_speech

    if not question.strip():
        raise UserError("ask: the question is empty")
    text = question if any(tag in question for tag in VISION_TOKENS) else f"<video>\n{question}"
    turns = [Turn("human", text), Turn("gpt", "")]
    if SPEECH_TOKEN in text:
        spoken = None
        if cfg.data.speech_strategy == "transcript":
            if not cfg.data.asr_model:
                raise UserError("ask: <speech> with data.speech_strategy=transcript needs data.asr_model")
            from app.data.speech import asr_pipeline, transcribe

            spoken = transcribe(asr_pipeline(cfg.data.asr_model), audio or video)
        turns = _apply_speech(turns, spoken)
    elif audio is not None:
        raise UserError("ask --audio: the question has no <speech> to put it in")
    return Record(id="ask", video=video, turns=turns, audio=audio)


def _load(cfg: Config, model_ref: str):
    from app.models.setup import load_adapter, load_model

    if model_ref == BASE:
        model, processor, _ = load_model(cfg, "baseline", say=console.print)
        return model, processor
    if model_ref.startswith(("models:/", "runs:/")):
        from app.preflight import preflight
        from app.tracking.registry import resolve_model_ref

        preflight(cfg, needs_store=True)
        adapter = resolve_model_ref(model_ref, cfg)
    else:
        adapter = Path(model_ref)
        if not adapter.is_dir():
            raise UserError(f"--model {model_ref}: not '{BASE}', an adapter folder or a models:/ reference")
    model, processor, _ = load_adapter(cfg, adapter, say=console.print)
    return model, processor


def ask(cfg: Config, model_ref: str, video: Path, question: str, audio: Path | None = None,
        base_too: bool = False) -> dict[str, str]:
    """Answers keyed by who gave them ("base", and the adapter's reference when one is asked)."""
    from transformers import TextStreamer

    from app.data.frame_cache import load_clip
    from app.evaluation.generate import answer
    from app.quiet import quiet_third_party

    video = Path(video)
    if not video.is_file():
        raise UserError(f"{video}: video not found")
    if audio is not None and not Path(audio).is_file():
        raise UserError(f"{audio}: audio file not found")
    if base_too and model_ref == BASE:
        raise UserError("ask --base-too: --model is already the base model")
    quiet_third_party()
    record = _record(video, question, audio, cfg)
    frames = load_clip(video, cfg.data)  # a VideoError is one line naming the clip
    started = time.perf_counter()
    model, processor = _load(cfg, model_ref)
    console.print(f"loaded {model_ref} in {time.perf_counter() - started:.1f} s", highlight=False)

    askers = [(BASE, model.disable_adapter)] if base_too else []
    askers.append((model_ref, None))
    answers: dict[str, str] = {}
    for who, context in askers:
        console.print(f"[bold]{who}:[/] ", end="", highlight=False)
        console.file.flush()
        streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        started = time.perf_counter()
        if context is None:
            answers[who] = answer(model, processor, record, frames, cfg.eval.max_new_tokens, streamer)
        else:
            with context():
                answers[who] = answer(model, processor, record, frames, cfg.eval.max_new_tokens, streamer)
        console.print(f"({who}: {time.perf_counter() - started:.2f} s)", style="dim", highlight=False)
    return answers
