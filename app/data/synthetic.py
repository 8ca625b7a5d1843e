"""Synthetic Ego4D-format sample set: real H.264 clips with an AAC track, and QA records about them.

Each clip shows one coloured shape moving in a straight line over a lightly textured grey background, so
three facts (colour, direction, shape) are visible in every frame and can be asked about. The set is
small and deterministic for a seed, so the demo and the tests can train and score on it in seconds.

Answer balance: for each question type the records that ask it get their values from an exact
round-robin over the four values, shuffled with the seed. The number of questions of each type is chosen
so that round-robin keeps every value within 1/4 + 5 % of that type's answers (counts like 5, 6, 9 or 13
cannot be balanced that tightly), which for tiny sets means more multi-turn records than the usual 1/3.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from rich.progress import Progress

from app.data.mcq import LETTERS, format_question
from app.data.media_files import AUDIO_SR, tone, write_clip, write_mp3

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 60, 230),
    "yellow": (235, 215, 25),
}
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
QUESTION_TYPES: tuple[str, ...] = ("color", "direction", "shape")
VALUES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "direction": DIRECTIONS, "shape": SHAPES}

PHRASINGS: dict[str, tuple[str, ...]] = {
    "color": (
        "What colour is the moving object?",
        "What color is the shape in the video?",
        "Which colour does the object have: red, green, blue or yellow?",
    ),
    "direction": (
        "Which way is the object moving?",
        "In which direction does the shape move?",
        "Is the object moving left, right, up or down?",
    ),
    "shape": (
        "What shape is the moving object?",
        "Which shape do you see moving?",
        "Is the object a circle, a square, a triangle or a cross?",
    ),
}
NARRATIONS: tuple[str, ...] = (
    "I am watching the object on the table.",
    "Something is sliding across my view right now.",
    "Let me look at the thing that is moving.",
    "I see a shape passing in front of me.",
)

OBJECT_SIZE = 0.16  # the object's radius as a share of the frame side
MAX_SHARE = 0.25 + 0.05  # the balance bound the tests and the brief ask for


@dataclass
class SampleSummary:
    out_dir: Path
    data_path: Path
    video_folder: Path
    eval_ids_path: Path
    train_ids_path: Path
    transcripts_path: Path
    num_records: int
    num_eval: int
    num_train: int
    num_audio_files: int
    num_speech_records: int
    seed: int
    frames: int
    fps: int
    size: int
    question_types: dict[str, int] = field(default_factory=dict)


@dataclass
class ClipSpec:
    clip_id: str
    color: str
    direction: str
    shape: str
    types: list[str]  # question types this clip's record asks, in order
    start: tuple[float, float]  # centre (x, y) in pixels at frame 0
    travel: float  # pixels covered from first to last frame
    tone_hz: float
    radius: float  # the object's radius in pixels


def _balanced_count(target: int, clips: int) -> int:
    """Nearest question count n <= clips that round-robin can spread with no value above MAX_SHARE."""

    def ok(n: int) -> bool:
        return n >= 4 and math.ceil(n / 4) / n <= MAX_SHARE + 1e-9

    candidates = [n for n in range(4, clips + 1) if ok(n)]
    if not candidates:
        raise ValueError(f"clips must be >= 4 to balance answers, got {clips}")
    return min(candidates, key=lambda n: (abs(n - target), n))


def _record_sizes(clips: int, total: int, rng: random.Random) -> list[int]:
    """How many QA pairs each record has (1..3), summing to total, with about 1/3 multi-turn."""
    extra = total - clips
    # m multi-turn records carrying `extra` additional questions need extra/2 <= m <= extra.
    multi = min(max(round(clips / 3), math.ceil(extra / 2)), extra, clips)
    threes = extra - multi
    twos = multi - threes
    sizes = [3] * threes + [2] * twos + [1] * (clips - multi)
    rng.shuffle(sizes)
    return sizes


def _assign_types(sizes: list[int], per_type: int, rng: random.Random) -> list[list[str]]:
    """Give each record `sizes[i]` distinct types so that every type is asked exactly per_type times.

    Filling the records with the most free slots first is the Gale-Ryser greedy, which always succeeds
    when per_type <= records and 2 * per_type <= records + multi-turn records (true by construction).
    """
    order = list(range(len(sizes)))
    rng.shuffle(order)  # tie-break among equally free records by the seed
    free = list(sizes)
    chosen: list[list[str]] = [[] for _ in sizes]
    for qtype in QUESTION_TYPES:
        picks = sorted(order, key=lambda i: -free[i])[:per_type]
        for i in picks:
            if free[i] <= 0:
                raise AssertionError("question plan is infeasible")  # cannot happen, see docstring
            chosen[i].append(qtype)
            free[i] -= 1
    for types in chosen:
        rng.shuffle(types)
    return chosen


def _round_robin(values: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def plan_clips(clips: int, seed: int, size: int, object_size: float = OBJECT_SIZE) -> list[ClipSpec]:
    """Decide every clip's facts and questions from the seed, before anything is rendered.

    `object_size`: the object's radius as a share of the frame side. It moves 75-100 % of the room its centre has
    while staying fully visible, so larger objects travel less.
    """
    if clips < 4:
        raise ValueError(f"clips must be >= 4 to balance answers, got {clips}")
    if not 0.05 <= object_size <= 0.3:
        raise ValueError(f"object size must be between 0.05 and 0.3 of the frame side, got {object_size}")
    rng = random.Random(seed)
    per_type = _balanced_count(round(clips / 2), clips)
    sizes = _record_sizes(clips, per_type * len(QUESTION_TYPES), rng)
    types = _assign_types(sizes, per_type, rng)

    facts: dict[str, list[str]] = {}
    for qtype in QUESTION_TYPES:
        # Independent streams per type so that one type's shuffle does not correlate with another's.
        trng = random.Random(f"{seed}-{qtype}")
        asked = [i for i in range(clips) if qtype in types[i]]
        unasked = [i for i in range(clips) if qtype not in types[i]]
        col = [""] * clips
        for i, v in zip(asked, _round_robin(VALUES[qtype], len(asked), trng), strict=True):
            col[i] = v
        for i, v in zip(unasked, _round_robin(VALUES[qtype], len(unasked), trng), strict=True):
            col[i] = v
        facts[qtype] = col

    radius = object_size * size
    margin = 2.0 + radius
    specs = []
    for i in range(clips):
        direction = facts["direction"][i]
        lo, hi = margin, size - margin  # the centre must stay here for the shape to be fully visible
        travel = rng.uniform(0.75, 1.0) * (hi - lo)
        along = rng.uniform(lo, hi - travel)  # start such that start + travel stays inside
        across = rng.uniform(lo, hi)
        if direction in ("left", "up"):
            along = size - along
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        specs.append(
            ClipSpec(
                clip_id=f"clip_{i:04d}",
                color=facts["color"][i],
                direction=direction,
                shape=facts["shape"][i],
                types=types[i],
                start=(x, y),
                travel=travel,
                tone_hz=220.0 * 2 ** (i % 24 / 12),  # a different pitch per clip, two octaves from A3
                radius=radius,
            )
        )
    return specs


def _shape_mask(shape: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = radius * 0.85  # about the circle's area, so size alone does not give the shape away
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Upward triangle inscribed in the circle: apex at the top, base at 0.5 r below the centre.
        top, bottom = cy - radius, cy + 0.5 * radius
        half_width = (yy - top) / (bottom - top) * radius * 0.87
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= half_width)
    if shape == "cross":
        arm = radius * 0.33
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
    raise ValueError(f"unknown shape {shape!r}")


# The scene's static lighting: red rises left to right, blue top to bottom, by this much either side of grey. A real
# scene's fixed layout tells a vision token where in the frame it is; the tiny twin's random vision tower has no
# sense of position of its own (RoPE only, untrained), and without these landmarks the direction of motion cannot
# be read from its tokens (benchmarks/RESULTS.md, "What direction needs"). Same in every clip: it carries no answer.
SCENE_LIGHT = 30


def scene_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8: grey with a fixed low-amplitude texture, lit by the static SCENE_LIGHT gradient."""
    texture = 118 + rng.integers(-8, 9, size=(size, size, 1)).astype(np.float32)  # static, so H.264 stays cheap
    ramp = np.linspace(-SCENE_LIGHT, SCENE_LIGHT, size, dtype=np.float32)
    light = np.zeros((size, size, 3), dtype=np.float32)
    light[..., 0] += ramp[None, :]
    light[..., 2] += ramp[:, None]
    return np.clip(texture + light, 0, 255).astype(np.uint8)


def render_frames(spec: ClipSpec, frames: int, size: int, seed: int) -> np.ndarray:
    """(frames, size, size, 3) uint8 RGB frames of the clip."""
    rng = np.random.default_rng([seed, int(spec.clip_id[5:])])
    background = scene_background(size, rng)
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[spec.direction]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        t = f / max(frames - 1, 1)
        cx = spec.start[0] + dx * spec.travel * t
        cy = spec.start[1] + dy * spec.travel * t
        frame = background.copy()
        frame[_shape_mask(spec.shape, cx, cy, spec.radius, size)] = COLORS[spec.color]
        out[f] = frame
    return out


def _conversations(spec: ClipSpec, rng: random.Random, speech: bool, mcq: bool = False) -> list[dict]:
    """One human/gpt pair per question type the clip asks. `mcq`: lettered options, the answer is the letter.

    The options are a type's four values in a fixed order, so correct letters are exactly as balanced as the
    answers, and what is learned is the video, as open-ended: a shuffled order would add a text-matching task
    (find the colour among the options) that the tiny twin cannot learn in a test's minutes.
    """
    turns: list[dict] = []
    for k, qtype in enumerate(spec.types):
        question = rng.choice(PHRASINGS[qtype])
        answer: dict = {"from": "gpt", "value": getattr(spec, qtype), "type": qtype}
        if mcq:
            options = list(VALUES[qtype])
            question = format_question(question, options)
            answer.update(value=LETTERS[options.index(getattr(spec, qtype))], options=options)
        if k == 0:
            question = ("<image>\n<speech>\n" if speech else "<image>\n") + question
        turns.append({"from": "human", "value": question})
        turns.append(answer)
    return turns


def _pick_eval(specs: list[ClipSpec], num_eval: int, rng: random.Random) -> set[int]:
    """Greedy held-out choice that keeps every type's eval answers as even over values as it can."""
    counts = {(t, v): 0 for t in QUESTION_TYPES for v in VALUES[t]}

    def cost(i: int) -> tuple[float, int]:
        # Growth of the sum of squared (type, value) counts per answer added: filling the emptiest cells first
        # covers every question type and keeps each type's answers even over its values.
        cells = [(t, getattr(specs[i], t)) for t in specs[i].types]
        growth = sum(2 * counts[c] + 1 for c in cells)
        return growth / len(cells), -len(cells)

    candidates = list(range(len(specs)))
    rng.shuffle(candidates)
    chosen: set[int] = set()
    for _ in range(num_eval):
        best = min((i for i in candidates if i not in chosen), key=cost)
        chosen.add(best)
        for t in specs[best].types:
            counts[(t, getattr(specs[best], t))] += 1
    return chosen


def _write_media(job: tuple[ClipSpec, Path, Path | None, int, int, int, bool, int]) -> None:
    """One clip's mp4 (with its tone as an AAC track when `audio`) and, when given, its separate wav/mp3."""
    spec, video_path, audio_path, frames, size, fps, audio, seed = job
    pcm = tone(spec.tone_hz, frames / fps)
    write_clip(video_path, render_frames(spec, frames, size, seed), fps, pcm if audio else None)
    if audio_path is not None:
        if audio_path.suffix == ".wav":
            sf.write(audio_path, pcm, AUDIO_SR, subtype="PCM_16")
        else:
            write_mp3(audio_path, pcm)


def make_sample_set(
    out_dir: Path,
    clips: int = 40,
    seed: int = 0,
    frames: int = 16,
    size: int = 112,
    fps: int = 8,
    eval_fraction: float = 0.2,
    progress: bool = True,
    audio: bool = True,
    num_eval: int | None = None,
    workers: int = 1,
    object_size: float = OBJECT_SIZE,
    mcq: bool = False,
) -> SampleSummary:
    """Write the synthetic set under out_dir and return what was written. Same seed, same files.

    `audio=False` leaves the tone tracks, the separate audio files and the spoken-question records out (the mp4s
    are then ~5x faster to write: AAC encoding dominates). `num_eval` held-out clips instead of `eval_fraction`.
    `workers` processes write the clips; the files are the same for any number of workers. `mcq`: every question
    as four-way multiple choice (`app.data.mcq`), answered by its letter.
    """
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number >= 32 (H.264 4:2:0 needs even sides), got {size}")
    if frames < 2 or fps < 1:
        raise ValueError(f"need frames >= 2 and fps >= 1, got frames={frames}, fps={fps}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    if num_eval is not None and not 1 <= num_eval < clips:
        raise ValueError(f"num_eval must be between 1 and clips - 1 ({clips - 1}), got {num_eval}")
    out_dir = Path(out_dir)
    video_dir, audio_dir = out_dir / "videos", out_dir / "audio"
    video_dir.mkdir(parents=True, exist_ok=True)
    if audio:
        audio_dir.mkdir(parents=True, exist_ok=True)

    specs = plan_clips(clips, seed, size, object_size)
    text_rng = random.Random(f"{seed}-text")
    records: list[dict] = []
    transcripts: dict[str, str] = {}
    jobs = []
    for i, spec in enumerate(specs):
        speech = audio and i % 7 == 3
        record: dict = {"id": spec.clip_id, "video": f"{spec.clip_id}.mp4"}
        audio_path = None
        if audio and i % 5 == 2:  # every 5th record also has a separate audio file, alternating wav and mp3
            audio_path = audio_dir / f"{spec.clip_id}.{'wav' if (i // 5) % 2 == 0 else 'mp3'}"
            record["audio"] = f"audio/{audio_path.name}"
        record["conversations"] = _conversations(spec, text_rng, speech, mcq)
        if speech:
            transcripts[spec.clip_id] = text_rng.choice(NARRATIONS)
        records.append(record)
        jobs.append((spec, video_dir / f"{spec.clip_id}.mp4", audio_path, frames, size, fps, audio, seed))
    num_audio = sum(job[2] is not None for job in jobs)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("writing clips", total=clips)
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_write_media, jobs, chunksize=16):
                    bar.advance(task)
        else:
            for job in jobs:
                _write_media(job)
                bar.advance(task)

    if num_eval is None:
        num_eval = min(max(1, round(clips * eval_fraction)), clips - 1)
    eval_idx = _pick_eval(specs, num_eval, random.Random(f"{seed}-split"))
    eval_ids = [s.clip_id for i, s in enumerate(specs) if i in eval_idx]
    train_ids = [s.clip_id for i, s in enumerate(specs) if i not in eval_idx]

    data_path = out_dir / "Ego4D.json"
    data_path.write_text(json.dumps(records, indent=2) + "\n")
    transcripts_path = out_dir / "transcripts.json"
    transcripts_path.write_text(json.dumps(transcripts, indent=2) + "\n")
    eval_path, train_path = out_dir / "eval_ids.txt", out_dir / "train_ids.txt"
    eval_path.write_text("".join(f"{x}\n" for x in eval_ids))
    train_path.write_text("".join(f"{x}\n" for x in train_ids))

    type_counts = {t: sum(t in s.types for s in specs) for t in QUESTION_TYPES}
    return SampleSummary(
        out_dir=out_dir,
        data_path=data_path,
        video_folder=video_dir,
        eval_ids_path=eval_path,
        train_ids_path=train_path,
        transcripts_path=transcripts_path,
        num_records=len(records),
        num_eval=len(eval_ids),
        num_train=len(train_ids),
        num_audio_files=num_audio,
        num_speech_records=len(transcripts),
        seed=seed,
        frames=frames,
        fps=fps,
        size=size,
        question_types=type_counts,
    )
