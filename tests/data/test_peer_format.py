"""The peer format migrating users bring (lmms-finetune's `ego4d_video_*.json`): no ids, `<video>`, list-valued
`video`, `system_prompt`. Real clips on disk, the real tiny tokenizers and both families' chat templates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.config import DataConfig
from app.data import ego4d
from app.data.conversation import build_messages
from app.data.ego4d import load_records
from app.data.synthetic import write_clip
from app.models.llava_ov15.processing import LlavaOV15Processor
from app.models.onevision import OnevisionProcessor
from app.models.tiny import train_tiny_tokenizer

SYSTEM = "Answer the following questions about the video."
ANSWER = {"from": "gpt", "value": "Someone opens the fridge."}


def _ask(text: str) -> list[dict]:
    return [{"from": "human", "value": text}, ANSWER]


# Shaped like lmms-finetune's example data: a list of objects without "id".
PEER_RECORDS = [
    {"system_prompt": SYSTEM, "video": "ego4d/kitchen.mp4",
     "conversations": _ask("<video>Please provide a detailed description of the video.")},
    {"video": ["ego4d/garage.mp4"], "conversations": _ask("<video>\nWhat is the person preparing?")},
    {"video": "ego4d/kitchen.mp4", "conversations": _ask("Look closely:\n<image>\nWhich hand opens the door?")},
    # An explicit id equal to what the second record would derive: the explicit one keeps it.
    {"id": "ego4d/garage", "video": "ego4d/garage.mp4", "conversations": _ask("<image>\nWhat colour is it?")},
    {"video": ["ego4d/kitchen.mp4", "ego4d/garage.mp4"], "conversations": _ask("<video>Compare.")},
    {"video": [], "conversations": _ask("<video>Describe.")},
    {"video": "ego4d/kitchen.mp4", "conversations": _ask("<video><image>Describe.")},
    {"video": "ego4d/kitchen.mp4", "conversations": _ask("<video>\n<video>\nDescribe.")},
    {"video": "ego4d/kitchen.mp4", "image": "bm.jpg", "conversations": _ask("<image>What does this show?")},
    {"video": "ego4d/kitchen.mp4", "system_prompt": ["not", "a", "string"], "conversations": _ask("<video>Hi")},
    {"video": "ego4d/kitchen.mp4", "conversations": [*_ask("First?"), *_ask("<video>Again?")]},
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ego4d.DataReport:
    root = tmp_path_factory.mktemp("peer")
    (root / "videos" / "ego4d").mkdir(parents=True)
    for name in ("kitchen", "garage"):
        frames = np.full((8, 32, 32, 3), 60 if name == "kitchen" else 180, dtype=np.uint8)
        write_clip(root / "videos" / "ego4d" / f"{name}.mp4", frames, 8, None)
    data = root / "ego4d_video_train.json"
    data.write_text(json.dumps(PEER_RECORDS, indent=4))
    cfg = DataConfig(data_path=str(data), video_folder=str(root / "videos"), eval_fraction=0.0)
    return load_records(cfg)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer()


def _by_id(report: ego4d.DataReport) -> dict[str, ego4d.Record]:
    return {r.id: r for r in report.records}


def test_ids_derived_from_video_path_and_counted(report):
    records = _by_id(report)
    # Readable (the path without its extension) and unique: a second use of a clip or a taken id gets "#2".
    assert list(records) == ["ego4d/kitchen", "ego4d/garage#2", "ego4d/kitchen#2", "ego4d/garage"]
    assert records["ego4d/garage#2"].video.name == "garage.mp4"  # the one-element list is that video
    # Every record but the explicit id and the two whose "video" names no single file.
    assert report.warnings[ego4d.DERIVED_ID] == len(PEER_RECORDS) - 3
    skipped_ids = [s.id for s in report.skipped_records]
    assert None in skipped_ids  # the records whose video cannot name them have no id
    assert all(i is None or i.startswith("ego4d/kitchen#") for i in skipped_ids)


def test_each_unusable_peer_record_is_a_named_skip(report):
    assert report.skipped == {
        ego4d.SEVERAL_VIDEOS: 1,
        ego4d.MISSING_VIDEO: 1,
        ego4d.BOTH_PLACEHOLDERS: 1,
        ego4d.MULTIPLE_IMAGE: 1,
        ego4d.IMAGE_NOT_FIRST: 1,
        ego4d.IMAGE_FIELD: 1,
        ego4d.BAD_SYSTEM_PROMPT: 1,
    }
    several = next(s for s in report.skipped_records if s.reason == ego4d.SEVERAL_VIDEOS)
    assert (several.id, several.detail) == (None, "2 videos")
    assert len(report.records) + sum(report.skipped.values()) == report.total == len(PEER_RECORDS)


def test_video_placeholder_becomes_one_video_part_where_it_stands(report):
    records = _by_id(report)
    first = build_messages(records["ego4d/kitchen"])
    assert first[0] == {"role": "system", "content": SYSTEM}
    assert first[1]["content"] == [
        {"type": "video"}, {"type": "text", "text": "Please provide a detailed description of the video."}]
    middle = build_messages(records["ego4d/kitchen#2"])
    assert middle[0]["role"] == "user"  # no system_prompt: no system message, the template's default applies
    assert middle[0]["content"] == [
        {"type": "text", "text": "Look closely:"}, {"type": "video"},
        {"type": "text", "text": "Which hand opens the door?"}]
    for record in report.records:
        parts = [p for m in build_messages(record) if isinstance(m["content"], list) for p in m["content"]]
        assert [p for p in parts if p["type"] == "video"] == [{"type": "video"}]
        assert not any("<video>" in p.get("text", "") or "<image>" in p.get("text", "") for p in parts)


def test_rendered_llava_ov15_text_has_one_video_and_the_system_prompt(report, tokenizer):
    processor = LlavaOV15Processor(tokenizer)
    for record in report.records:
        text = processor.apply_chat_template(build_messages(record))
        assert text.count("<|video_pad|>") == 1, text
        assert "<video>" not in text and "<image>" not in text, text
        ids = processor.tokenizer(text)["input_ids"]
        assert ids.count(processor.video_token_id) == 1
    text = processor.apply_chat_template(build_messages(_by_id(report)["ego4d/kitchen"]))
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")
    assert text.count("<|im_start|>system") == 1  # the user's system turn replaces the default one


def test_rendered_llava_onevision_text_has_one_video_and_the_system_prompt(report):
    from app.models.onevision import IMAGE_TOKEN, VIDEO_TOKEN

    tok = train_tiny_tokenizer()  # its own: adding tokens must not change the module's tokenizer
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
    processor = OnevisionProcessor(tok, image_size=28)
    first = processor.apply_chat_template(build_messages(_by_id(report)["ego4d/kitchen"]))
    assert first.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<video>\nPlease provide")
    for record in report.records:
        text = processor.apply_chat_template(build_messages(record))
        assert text.count(VIDEO_TOKEN) == 1 and IMAGE_TOKEN not in text, text
