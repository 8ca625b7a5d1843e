"""Ego4D-format records: parsing, validation, filters and the train/held-out split.

A record is `{id, video, audio?, system_prompt?, conversations: [{from: human|gpt, value, type?}]}`.
`<image>` or `<video>` marks where the video goes (once, in the first human turn), `<speech>` where the
spoken input goes. The peer format that lmms-finetune users bring is read as well: no `id` (one is derived
from the video path and counted as a warning), `video` as a one-element list, `system_prompt` as the system
turn. File names match after Unicode normalisation (macOS writes NFD, most JSON holds NFC). A bad file is a
one-line `DataError`; a bad record is a counted skip with a reason, kept in full in `DataReport.skipped_records`,
so nothing is ever dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from app.config import DataConfig
from app.data.geometry import clip_plan
from app.data.mcq import check_options
from app.data.paths import derive_id, locate
from app.data.video import VideoInfo
from app.errors import UserError
from app.io import one_line

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
VISION_TOKENS = (IMAGE_TOKEN, VIDEO_TOKEN)  # either marks where the record's one video goes
SPEECH_TOKEN = "<speech>"
ROLES = {"human": "user", "gpt": "assistant"}

# Skip reasons (shown by `data validate` and in run summaries). Kept as constants so tests,
# reports and the validator agree on the words.
NOT_AN_OBJECT = "record is not a JSON object"
MISSING_ID = "empty or invalid id"
DUPLICATE_ID = "duplicate id"
MISSING_VIDEO = "missing video field"
SEVERAL_VIDEOS = "several videos in one record (not supported)"
IMAGE_FIELD = "image field (still images not supported)"
BAD_SYSTEM_PROMPT = "system_prompt is not a string"
MISSING_CONVERSATIONS = "missing or empty conversations"
BAD_TURN = "malformed turn (needs from/value strings)"
UNKNOWN_ROLE = "unknown role in conversations"
BAD_OPTIONS = "options not a list of 2-10 strings on a gpt turn"
NO_GPT_TURN = "no gpt turn"
MULTIPLE_IMAGE = "<image>/<video> more than once"
BOTH_PLACEHOLDERS = "both <image> and <video> (one video per record)"
IMAGE_NOT_FIRST = "<image>/<video> outside the first human turn"
PATH_ESCAPES = "path escapes its folder"
VIDEO_NOT_FOUND = "video file missing"
UNDECODABLE = "undecodable video"
TRUNCATED = "truncated video (decodable span short of its declared duration)"
NO_TRANSCRIPT = "no transcript for <speech>"
FILTERED_OUT = "filtered out by video_ids_file"

DERIVED_ID = "id derived from video path"
SHORT_CLIP = "clip shorter than frames asked (frames repeated)"
DECODED_WITH_PYAV = "decoded with PyAV (decord cannot read it, e.g. AV1)"
AUDIO_MISSING = "audio file missing (record kept, audio unused)"
AUDIO_UNREADABLE = "audio file unreadable (record kept; ASR, if used, skips it)"


class DataError(UserError):
    """A data file that cannot be used at all (one line, names the file)."""


@dataclass(frozen=True)
class SkippedRecord:
    """One record left out, with enough to find it again: its id (None when the record has none), the file
    it names (as resolved when known, else as written, None when absent), the reason (one of the constants
    above, the key of `DataReport.skipped`), the split it would have had (None without an id) and an
    optional one-line detail such as the decoder's message."""

    id: str | None
    file: str | None
    reason: str
    split: str | None
    detail: str | None = None

    def describe(self) -> str:
        """One line for a console or a results table."""
        where = f" [{self.file}]" if self.file else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.id or '(no id)'}{where}: {self.reason}{detail}"


@dataclass
class Turn:
    role: str  # "human" | "gpt"
    value: str
    type: str | None = None
    options: tuple[str, ...] | None = None  # a multiple-choice gpt turn's options (`app.data.mcq`)


@dataclass
class Record:
    id: str
    video: Path
    turns: list[Turn]
    audio: Path | None = None
    split: str = "train"
    system: str | None = None  # the system turn (peer format's `system_prompt`); None: the template's default
    info: VideoInfo | None = None  # the clip's probe (size, duration, decoder) when data.check_decodable is on

    @property
    def question_types(self) -> list[str | None]:
        return [t.type for t in self.turns if t.role == "gpt"]


@dataclass
class DataReport:
    records: list[Record] = field(default_factory=list)
    total: int = 0
    skipped: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    # reason -> first few record ids (or "#index" when there is no id), so users can find them.
    examples: dict[str, list[str]] = field(default_factory=dict)
    unknown_ids: list[str] = field(default_factory=list)
    unknown_eval_ids: list[str] = field(default_factory=list)
    # Every skip in full (the counter and `examples` above only summarise them).
    skipped_records: list[SkippedRecord] = field(default_factory=list)

    def skip(
        self,
        reason: str,
        rid: str | None,
        file: str | Path | None = None,
        split: str | None = None,
        detail: str | None = None,
        example: str | None = None,
    ) -> None:
        """Count a skipped record and keep it; `example` overrides what the summary table shows for it."""
        detail = one_line(detail) if detail else None
        if example is None:
            example = f"{rid} ({detail or file})" if (detail or file) else str(rid)
        self.note(self.skipped, reason, example)
        self.skipped_records.append(SkippedRecord(rid, str(file) if file is not None else None, reason, split, detail))

    def skipped_held_out(self) -> list[SkippedRecord]:
        """Skipped records that belong to the held-out split: questions the evaluation cannot score."""
        return [s for s in self.skipped_records if s.split == "eval"]

    def note(self, counter: Counter, reason: str, culprit: str) -> None:
        counter[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(culprit)

    @property
    def train(self) -> list[Record]:
        return [r for r in self.records if r.split == "train"]

    @property
    def eval(self) -> list[Record]:
        return [r for r in self.records if r.split == "eval"]

    def summary(self) -> dict:
        return {
            "total": self.total,
            "usable": len(self.records),
            "train": len(self.train),
            "eval": len(self.eval),
            "skipped": dict(self.skipped),
            "warnings": dict(self.warnings),
            "unknown_ids": len(self.unknown_ids),
        }


def read_json_list(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"{path}: data file not found (set data.data_path)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def read_id_file(path: Path, key: str = "ids file") -> list[str]:
    """One id per line; blank lines and surrounding spaces are ignored."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (set {key})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8") from None
    return [line.strip() for line in lines if line.strip()]


def _video_field(value: object) -> tuple[str | None, str | None]:
    """(video path, None) or (None, skip reason); a one-element list (peer format) is that video."""
    if isinstance(value, list):
        if len(value) > 1:
            return None, SEVERAL_VIDEOS
        value = value[0] if value else None
    if isinstance(value, str) and value.strip():
        return value, None
    return None, MISSING_VIDEO


def load_transcripts(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(data, dict):
        raise DataError(f"{path}: transcripts file must be a JSON object mapping id -> text")
    return {str(k): str(v) for k, v in data.items()}


def _parse_turns(raw: object) -> tuple[list[Turn] | None, str | None]:
    if not isinstance(raw, list) or not raw:
        return None, MISSING_CONVERSATIONS
    turns = []
    for t in raw:
        if not isinstance(t, dict) or not isinstance(t.get("from"), str) or not isinstance(t.get("value"), str):
            return None, BAD_TURN
        if t["from"] not in ROLES:
            return None, UNKNOWN_ROLE
        kind = t.get("type")
        options = None
        if "options" in t:
            options = check_options(t["options"])
            if options is None or t["from"] != "gpt":
                return None, BAD_OPTIONS
        turns.append(Turn(t["from"], t["value"], str(kind) if kind is not None else None, options))
    if not any(t.role == "gpt" for t in turns):
        return None, NO_GPT_TURN
    counts = [sum(t.value.count(tag) for t in turns) for tag in VISION_TOKENS]
    if all(counts):
        return None, BOTH_PLACEHOLDERS
    if sum(counts) > 1:
        return None, MULTIPLE_IMAGE
    first_human = next((i for i, t in enumerate(turns) if t.role == "human"), None)
    if any(tag in t.value for i, t in enumerate(turns) if i != first_human for tag in VISION_TOKENS):
        return None, IMAGE_NOT_FIRST
    return turns, None


def _apply_speech(turns: list[Turn], text: str | None) -> list[Turn]:
    """`drop` passes text=None: the tag and the line break after it disappear."""
    out = []
    for t in turns:
        if SPEECH_TOKEN in t.value:
            value = t.value.replace(SPEECH_TOKEN + "\n", SPEECH_TOKEN) if text is None else t.value
            value = value.replace(SPEECH_TOKEN, text or "").strip()
            t = Turn(t.role, value, t.type, t.options)
        out.append(t)
    return out


def _is_eval(record_id: str, fraction: float) -> bool:
    digest = hashlib.sha1(record_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def load_records(
    cfg: DataConfig,
    probe: Callable[[Path], VideoInfo] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    audio_probe: Callable[[Path], None] | None = None,
) -> DataReport:
    """Parse, filter and check every record of `cfg.data_path`.

    `probe(path) -> VideoInfo` raises on an undecodable or truncated video; None skips that (costly) check.
    `audio_probe(path)` raises on an unreadable audio file: a warning, the record is kept without audio.
    `transcript`-strategy records whose text comes from an ASR model are resolved later, by
    `app.data.speech`, since that needs the model.
    """
    data_path = Path(cfg.data_path)
    raw_records = read_json_list(data_path)
    video_folder = Path(cfg.video_folder)
    if not video_folder.is_dir():
        raise DataError(f"{video_folder}: video folder not found (set data.video_folder)")
    audio_folder = Path(cfg.audio_folder) if cfg.audio_folder else data_path.parent

    keep_ids = set(read_id_file(Path(cfg.video_ids_file), "data.video_ids_file")) if cfg.video_ids_file else None
    eval_ids = set(read_id_file(Path(cfg.eval_ids_file), "data.eval_ids_file")) if cfg.eval_ids_file else None
    transcripts = (
        load_transcripts(Path(cfg.transcripts_file))
        if cfg.speech_strategy == "transcript" and cfg.transcripts_file
        else {}
    )

    def split_of(rid: str | None) -> str | None:
        if rid is None:
            return None
        if eval_ids is not None:
            return "eval" if rid in eval_ids else "train"
        return "eval" if _is_eval(rid, cfg.eval_fraction) else "train"

    report = DataReport(total=len(raw_records))

    def skip(reason: str, rid: str | None, file: object = None, detail: str | None = None, **kw: str) -> None:
        report.skip(reason, rid, file, split_of(rid), detail, **kw)

    # Derived ids must not take an id that a later record states explicitly.
    explicit_ids = {str(r["id"]) for r in raw_records if isinstance(r, dict) and isinstance(r.get("id"), (str, int))}
    seen: set[str] = set()
    matched_keep: set[str] = set()
    items = progress(raw_records) if progress else raw_records
    for index, raw in enumerate(items):
        if not isinstance(raw, dict):
            skip(NOT_AN_OBJECT, None, example=f"#{index}")
            continue
        video, video_reason = _video_field(raw.get("video"))
        several = f"{len(raw['video'])} videos" if video_reason == SEVERAL_VIDEOS else None
        rid = raw.get("id")
        if rid is None:  # peer format: the video path names the record
            if video is None:
                skip(video_reason, None, detail=several, example=f"#{index}")
                continue
            base = rid = derive_id(video)
            copy = 1
            while rid in seen or rid in explicit_ids:
                copy += 1
                rid = f"{base}#{copy}"
            report.note(report.warnings, DERIVED_ID, f"{rid} ({video})")
        elif not isinstance(rid, (str, int)) or str(rid).strip() == "":
            skip(MISSING_ID, None, video, example=f"#{index}")
            continue
        rid = str(rid)
        if rid in seen:
            skip(DUPLICATE_ID, rid, video, example=rid)
            continue
        seen.add(rid)
        if video is None:
            skip(video_reason, rid, detail=several)
            continue
        if raw.get("image") not in (None, "", []):
            # lmms-finetune's still image: its <image> would otherwise be read as this record's video.
            skip(IMAGE_FIELD, rid, video, example=rid)
            continue
        system = raw.get("system_prompt")
        if system is not None and not isinstance(system, str):
            skip(BAD_SYSTEM_PROMPT, rid, video, example=rid)
            continue
        if keep_ids is not None:
            hit = {rid, Path(video).stem} & keep_ids
            if not hit:
                skip(FILTERED_OUT, rid, video, example=rid)
                continue
            matched_keep |= hit
        turns, reason = _parse_turns(raw.get("conversations"))
        if reason:
            skip(reason, rid, video, example=rid)
            continue
        video_path = locate(video_folder, video)
        if video_path is None:
            skip(PATH_ESCAPES, rid, video)
            continue
        if not video_path.is_file():
            skip(VIDEO_NOT_FOUND, rid, video_path)
            continue
        audio_path = None
        if isinstance(raw.get("audio"), str) and raw["audio"].strip():
            audio_path = locate(audio_folder, raw["audio"])
            if audio_path is None:
                skip(PATH_ESCAPES, rid, raw["audio"])
                continue
            if not audio_path.is_file():
                report.note(report.warnings, AUDIO_MISSING, f"{rid} ({audio_path})")
                audio_path = None
            elif audio_probe is not None:
                try:
                    audio_probe(audio_path)
                except Exception as exc:  # the probe's own error class names the file
                    # Kept, not dropped: ASR must not fall back to the clip's own track behind the user's back.
                    report.note(report.warnings, AUDIO_UNREADABLE, f"{rid} ({one_line(exc)})")
        has_speech = any(SPEECH_TOKEN in t.value for t in turns)
        if has_speech and cfg.speech_strategy == "drop":
            turns = _apply_speech(turns, None)
        elif has_speech and rid in transcripts:
            turns = _apply_speech(turns, transcripts[rid])
        elif has_speech and not cfg.asr_model:
            skip(NO_TRANSCRIPT, rid, video_path, example=rid)
            continue
        # else: <speech> stays until app.data.speech transcribes it with the ASR model.
        info = None
        if probe is not None:
            try:
                info = probe(video_path)
            except Exception as exc:  # the probe's own error class names the file
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                skip(TRUNCATED if ": truncated: " in message else UNDECODABLE, rid, video_path, message)
                continue
            if info.num_frames < clip_plan(info, cfg)[0]:
                report.note(report.warnings, SHORT_CLIP, rid)
            if info.decoder == "pyav":
                report.note(report.warnings, DECODED_WITH_PYAV, rid)
        system = system if system and system.strip() else None
        report.records.append(Record(rid, video_path, turns, audio_path, split_of(rid) or "train", system, info))

    if keep_ids is not None:
        report.unknown_ids = sorted(keep_ids - matched_keep)
    if eval_ids is not None:
        report.unknown_eval_ids = sorted(eval_ids - seen)
    return report


def fingerprint(records: list[Record]) -> str:
    """Identifies the data a run saw: record content plus each video's size and mtime."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: r.id):
        st = r.video.stat()
        turns = [(t.role, t.value, t.type) for t in r.turns]
        if r.system is not None:  # only then, so fingerprints of data without a system prompt stay as they were
            turns.insert(0, ("system", r.system, None))
        h.update(json.dumps([r.id, r.split, r.video.name, st.st_size, int(st.st_mtime), turns]).encode())
    return h.hexdigest()[:16]
