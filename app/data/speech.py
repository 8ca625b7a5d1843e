"""`<speech>` with `speech_strategy: transcript` and an ASR model: transcribe the record's audio.

The record's own audio file (mp3/wav) is used when it has one, else the mp4's audio track. The model runs
through transformers' ASR pipeline (any architecture it supports: Whisper, wav2vec2 CTC, …), never with
remote code. Records whose audio cannot be read are counted skips, like every other bad record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from app.data.ego4d import SPEECH_TOKEN, DataReport, _apply_speech

ASR_FAILED = "no usable audio for ASR"


def needs_asr(report: DataReport) -> list[int]:
    return [i for i, r in enumerate(report.records) if any(SPEECH_TOKEN in t.value for t in r.turns)]


def asr_pipeline(asr_model: str):
    """transformers' ASR pipeline for `asr_model`, on CPU, never with remote code."""
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=asr_model, trust_remote_code=False, device="cpu")


def transcribe(asr, path, sr: int = 16000) -> str:
    """The words of `path`'s audio (a separate file, or a video's own track). Raises AudioError."""
    from app.data.audio import load_audio

    return asr({"raw": load_audio(path, sr=sr), "sampling_rate": sr})["text"].strip()


def transcribe_speech(
    report: DataReport,
    asr_model: str,
    sr: int = 16000,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> int:
    """Replace `<speech>` in the records still holding it; returns how many were transcribed."""
    from app.data.audio import AudioError

    todo = needs_asr(report)
    if not todo:
        return 0
    asr = asr_pipeline(asr_model)
    dropped: set[int] = set()
    done = 0
    for i in progress(todo) if progress else todo:
        record = report.records[i]
        try:
            text = transcribe(asr, record.audio or record.video, sr)
        except AudioError as exc:
            report.skip(ASR_FAILED, record.id, record.audio or record.video, record.split, str(exc))
            dropped.add(i)
            continue
        record.turns = _apply_speech(record.turns, text)
        done += 1
    report.records = [r for i, r in enumerate(report.records) if i not in dropped]
    return done
