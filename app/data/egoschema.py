"""EgoSchema (5-way multiple choice over 3-minute Ego4D clips) into this project's Ego4D format.

EgoSchema ships `questions.json`, a list of `{q_uid, google_drive_id, question, "option 0" ... "option 4"}`, and
for the public 500-question subset `subset_answers.json`, `{q_uid: index}`; its clips are `<q_uid>.mp4`. Each
question becomes one record: id = q_uid, video = the clip found under the videos folder, a human turn asking the
question with lettered options in lmms-eval's wording (`app.data.mcq`), and a gpt turn with the correct letter,
`type: "mcq"` and the options kept for likelihood scoring. A question without a clip or an answer is a counted
skip, never silently lost. The output depends only on the inputs, so importing again writes the same bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from app.data.ego4d import DataError, read_json_list
from app.data.mcq import LETTERS, MCQ, format_question
from app.io import write_atomic, write_json_atomic

NUM_OPTIONS = 5
NO_VIDEO = "no <q_uid>.mp4 under the videos folder"
NO_ANSWER = "no answer in the answers file"
BAD_QUESTION = "malformed question (needs q_uid, question, option 0-4 strings)"
BAD_ANSWER = "answer is not an option index 0-4"
DUPLICATE = "duplicate q_uid"


@dataclass
class ImportReport:
    out: Path
    questions: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, q_uid: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(q_uid)


def _answers(path: Path) -> dict[str, object]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: answers file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object mapping q_uid -> option index")
    return {str(k): v for k, v in data.items()}


def _clips(videos: Path) -> dict[str, Path]:
    if not Path(videos).is_dir():
        raise DataError(f"{videos}: videos folder not found")
    found: dict[str, Path] = {}
    for path in sorted(Path(videos).rglob("*.mp4")):
        found.setdefault(path.stem, path.relative_to(videos))
    return found


def _index(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value < NUM_OPTIONS else None


def import_egoschema(questions: Path, answers: Path, videos: Path, out: Path) -> ImportReport:
    """Write `out` (records, video paths relative to `videos`: use it as data.video_folder) and `ids_file(out)`."""
    if not Path(questions).is_file():
        raise DataError(f"{questions}: questions file not found")
    raw = read_json_list(Path(questions))
    truth = _answers(answers)
    clips = _clips(videos)
    report = ImportReport(Path(out), questions=len(raw))
    records, seen = [], set()
    for q in raw:
        q_uid = q.get("q_uid") if isinstance(q, dict) else None
        options = [q.get(f"option {i}") for i in range(NUM_OPTIONS)] if isinstance(q, dict) else []
        if not isinstance(q_uid, str) or not q_uid or not isinstance(q.get("question"), str) \
                or not all(isinstance(o, str) and o.strip() for o in options):
            report.skip(BAD_QUESTION, q_uid if isinstance(q_uid, str) and q_uid else f"#{len(seen)}")
            continue
        if q_uid in seen:
            report.skip(DUPLICATE, q_uid)
            continue
        seen.add(q_uid)
        if q_uid not in truth:
            report.skip(NO_ANSWER, q_uid)
            continue
        index = _index(truth[q_uid])
        if index is None:
            report.skip(BAD_ANSWER, q_uid)
            continue
        if q_uid not in clips:
            report.skip(NO_VIDEO, q_uid)
            continue
        records.append({
            "id": q_uid,
            "video": clips[q_uid].as_posix(),
            "conversations": [
                {"from": "human", "value": "<video>\n" + format_question(q["question"], options)},
                {"from": "gpt", "value": LETTERS[index], "type": MCQ, "options": [o.strip() for o in options]},
            ],
        })
    write_json_atomic(Path(out), records)
    write_atomic(ids_file(out), "".join(f"{r['id']}\n" for r in records))
    report.written = len(records)
    return report


def ids_file(out: Path) -> Path:
    """Every imported id, one a line, beside the records: `data.eval_ids_file` to score all of them."""
    return Path(out).with_suffix(".ids.txt")
