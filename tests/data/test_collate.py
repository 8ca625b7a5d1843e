"""Chat template -> tensors: label masking, exact ids and lengths, padding, dropped clips. Real tiny model and mp4s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from app.config import DataConfig
from app.data.conversation import (
    IGNORE_INDEX,
    build_messages,
    encode_for_training,
    encode_prompt,
    filter_too_long,
    sequence_length,
)
from app.data.dataset import VideoQADataset
from app.data.ego4d import Record, Turn, load_records
from app.data.padding import PaddingCollator
from app.data.video import sample_frames
from app.models.llava_ov15 import LlavaOV15ForConditionalGeneration, LlavaOV15Processor
from app.models.onevision import OnevisionProcessor
from app.models.tiny import build_tiny_llava_onevision, build_tiny_llava_ov15

NUM_FRAMES, FRAME_SIZE = 4, 112


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_llava_ov15(tmp_path_factory.mktemp("models") / "tiny-llava-ov15", seed=0)


@pytest.fixture(scope="module")
def processor(tiny_dir) -> LlavaOV15Processor:
    return LlavaOV15Processor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def data_cfg(sample_set, tmp_path_factory) -> DataConfig:
    return DataConfig(
        frame_cache_dir=str(tmp_path_factory.mktemp("frames")),
        data_path=str(sample_set.data_path),
        video_folder=str(sample_set.video_folder),
        eval_ids_file=str(sample_set.eval_ids_path),
        num_frames=NUM_FRAMES,
        max_pixels=FRAME_SIZE * FRAME_SIZE,
        max_seq_len=4096,
    )


@pytest.fixture(scope="module")
def records(data_cfg) -> list[Record]:
    return load_records(data_cfg).records


@pytest.fixture(scope="module")
def multi(records) -> Record:
    return next(r for r in records if sum(t.role == "gpt" for t in r.turns) >= 2)


def _frames(record: Record):
    return sample_frames(record.video, NUM_FRAMES, size=(FRAME_SIZE, FRAME_SIZE))


def _answers(record: Record) -> list[str]:
    return [t.value for t in record.turns if t.role == "gpt"]


def _labelled_runs(labels: torch.Tensor) -> list[list[int]]:
    """Contiguous runs of labelled token ids (one run per assistant reply)."""
    runs, current = [], []
    for x in labels.tolist():
        if x == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(x)
    return runs + ([current] if current else [])


def test_collated_batch_labels_decode_to_answers_only(records, multi, data_cfg, processor):
    single = next(r for r in records if len(_answers(r)) == 1)
    dataset = VideoQADataset([multi, single], data_cfg, processor)
    batch = PaddingCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    for row, record in enumerate([multi, single]):
        runs = _labelled_runs(batch["labels"][row])
        decoded = [processor.tokenizer.decode(run) for run in runs]
        assert decoded == [a + "<|im_end|>" for a in _answers(record)]
        # Label values are the input ids at those positions (the model shifts them itself).
        mask = batch["labels"][row] != IGNORE_INDEX
        assert torch.equal(batch["labels"][row][mask], batch["input_ids"][row][mask])
    # The questions are in the input but carry no label.
    full_text = processor.tokenizer.decode(batch["input_ids"][0])
    labelled_text = "".join(processor.tokenizer.decode(run) for run in _labelled_runs(batch["labels"][0]))
    for question in [t.value.replace("<image>\n", "") for t in multi.turns if t.role == "human"]:
        assert question in full_text and question not in labelled_text
    assert "assistant" not in labelled_text


def test_ids_equal_processor_on_full_conversation_and_lengths_are_exact(records, processor):
    merge = processor.image_processor.merge_size ** 2
    for record in records[:5]:
        frames = _frames(record)
        enc = encode_for_training(record, frames, processor)
        text = processor.apply_chat_template(build_messages(record))
        ref = processor(text=text, videos=[frames])
        assert torch.equal(enc["input_ids"], ref["input_ids"][0])
        assert torch.equal(enc["pixel_values_videos"], ref["pixel_values_videos"])
        assert torch.equal(enc["video_grid_thw"], ref["video_grid_thw"])
        grid = enc["video_grid_thw"][0]
        assert grid[0] == NUM_FRAMES
        pads = int((enc["input_ids"] == processor.video_token_id).sum())
        assert pads == int(grid.prod()) // merge
        # All vision tokens sit in one unbroken run, none labelled.
        where = (enc["input_ids"] == processor.video_token_id).nonzero().flatten()
        assert int(where[-1] - where[0]) + 1 == pads
        assert (enc["labels"][where] == IGNORE_INDEX).all()
        assert enc["labels"].shape == enc["input_ids"].shape
        assert sequence_length(record, processor, NUM_FRAMES, (FRAME_SIZE, FRAME_SIZE)) == len(enc["input_ids"])


def test_too_long_record_is_reported_with_its_length_not_truncated(records, processor, data_cfg):
    lengths = {r.id: sequence_length(r, processor, NUM_FRAMES, (FRAME_SIZE, FRAME_SIZE)) for r in records}
    cut = sorted(lengths.values())[len(lengths) // 2]
    cfg = data_cfg.model_copy(update={"max_seq_len": cut})
    kept, skipped = filter_too_long(records, processor, cfg)
    assert skipped and kept
    assert skipped == [(r.id, lengths[r.id]) for r in records if lengths[r.id] > cut]
    assert [r.id for r in kept] == [r.id for r in records if lengths[r.id] <= cut]
    assert all(length > cut for _, length in skipped)
    # A kept record is encoded whole: nothing is cut to fit.
    assert all(len(encode_for_training(r, _frames(r), processor)["input_ids"]) <= cut for r in kept[:2])


def test_right_padding_and_tiny_model_forward(records, data_cfg, processor, tiny_dir):
    by_length = sorted(records, key=lambda r: sequence_length(r, processor, NUM_FRAMES, (FRAME_SIZE, FRAME_SIZE)))
    pair = [by_length[0], by_length[-1]]
    dataset = VideoQADataset(pair, data_cfg, processor)
    samples = [dataset[0], dataset[1]]
    pad_id = processor.tokenizer.pad_token_id
    batch = PaddingCollator(pad_id)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert lengths[0] < lengths[1] and batch["input_ids"].shape == (2, lengths[1])
    for row, n in enumerate(lengths):
        assert torch.equal(batch["input_ids"][row, :n], samples[row]["input_ids"])
        assert (batch["input_ids"][row, n:] == pad_id).all()
        assert (batch["attention_mask"][row, :n] == 1).all() and (batch["attention_mask"][row, n:] == 0).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert torch.equal(batch["labels"][row, :n], samples[row]["labels"])
    # Vision features in batch order, so they line up with each row's pad tokens.
    assert torch.equal(batch["pixel_values_videos"], torch.cat([s["pixel_values_videos"] for s in samples]))
    assert batch["video_grid_thw"].shape == (2, 3)
    assert batch["index"].tolist() == [0, 1]

    model = LlavaOV15ForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    inputs = {k: v for k, v in batch.items() if k != "index"}
    with torch.no_grad():
        loss = model(**inputs).loss
    assert torch.isfinite(loss)


def test_video_goes_first_without_image_tag_and_tag_splits_text(processor, records):
    video = records[0].video
    plain = Record("plain", video, [Turn("human", "What colour is it?"), Turn("gpt", "red")])
    messages = build_messages(plain)
    video_first = [{"type": "video"}, {"type": "text", "text": "What colour is it?"}]
    assert messages[0] == {"role": "user", "content": video_first}
    assert messages[1] == {"role": "assistant", "content": "red"}
    text = processor.apply_chat_template(messages)
    assert "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What colour is it?<|im_end|>" in text
    assert text.startswith("<|im_start|>system\n")

    middle = Record("mid", video, [Turn("human", "Look here:\n<image>\nWhat moves?"), Turn("gpt", "a ball")])
    assert build_messages(middle)[0]["content"] == [
        {"type": "text", "text": "Look here:"},
        {"type": "video"},
        {"type": "text", "text": "What moves?"},
    ]
    enc = encode_for_training(plain, _frames(plain), processor)
    assert [processor.tokenizer.decode(r) for r in _labelled_runs(enc["labels"])] == ["red<|im_end|>"]


def test_encode_prompt_ends_with_header_and_returns_reference(multi, processor):
    frames = _frames(multi)
    answers = _answers(multi)
    header = processor.tokenizer("<|im_start|>assistant\n")["input_ids"]
    for k in (0, 1):
        prompt, reference = encode_prompt(multi, frames, processor, k)
        assert reference == answers[k]
        ids = prompt["input_ids"]
        assert ids.dim() == 1 and ids[-len(header) :].tolist() == header
        text = processor.tokenizer.decode(ids)
        assert text.count("<|im_start|>assistant\n") == k + 1
        assert all(a in text for a in answers[:k])  # earlier answers are history
        assert int((ids == processor.video_token_id).sum()) == int(prompt["video_grid_thw"].prod()) // 4
    with pytest.raises(ValueError):
        encode_prompt(multi, frames, processor, len(answers))


def test_broken_mp4_is_dropped_and_counted(records, data_cfg, processor, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(records[0].video.read_bytes()[:300])
    bad = Record("bad", broken, records[0].turns)
    dataset = VideoQADataset([records[0], bad, records[1]], data_cfg, processor)
    assert dataset[1] is None

    collator = PaddingCollator(processor.tokenizer.pad_token_id)
    batch = collator([dataset[0], dataset[1], dataset[2]])
    assert batch["input_ids"].shape[0] == 2 and batch["index"].tolist() == [0, 2]
    assert collator.dropped == 1
    assert collator([None]) is None and collator.dropped == 2

    # Drops counted inside a DataLoader worker process reach the parent's counter.
    loader_collator = PaddingCollator(processor.tokenizer.pad_token_id)
    loader = DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=loader_collator)
    (batch,) = list(loader)
    assert batch["index"].tolist() == [0, 2] and loader_collator.dropped == 1


def test_batches_from_loader_workers_equal_in_process_batches(records, data_cfg, processor):
    # Small tensors cross from the workers inside the pickle, pixels through shared memory: same batch either way.
    dataset = VideoQADataset(records[:6], data_cfg, processor)
    collator = PaddingCollator(processor.tokenizer.pad_token_id)
    local = list(DataLoader(dataset, batch_size=3, num_workers=0, collate_fn=collator))
    workers = list(DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collator))
    assert len(local) == len(workers) == 2
    for a, b in zip(local, workers, strict=True):
        assert type(b) is dict and list(a) == list(b)
        for key in a:
            assert a[key].dtype == b[key].dtype
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_onevision_family_collates_with_batch_dim(records, tmp_path_factory):
    from transformers import LlavaOnevisionForConditionalGeneration

    one_dir = build_tiny_llava_onevision(tmp_path_factory.mktemp("models") / "tiny-onevision", seed=0)
    proc = OnevisionProcessor.from_pretrained(one_dir)
    samples = [encode_for_training(r, _frames(r), proc) for r in records[:2]]
    for r, s in zip(records[:2], samples, strict=True):
        assert s["pixel_values_videos"].shape[:2] == (1, NUM_FRAMES)
        assert int((s["input_ids"] == proc.video_token_id).sum()) == proc.tokens_per_video(NUM_FRAMES)
        assert sequence_length(r, proc, NUM_FRAMES, (FRAME_SIZE, FRAME_SIZE)) == len(s["input_ids"])
        assert [proc.tokenizer.decode(run) for run in _labelled_runs(s["labels"])] == [
            a + "<|im_end|>" for a in _answers(r)
        ]
    batch = PaddingCollator(proc.tokenizer.pad_token_id)(samples)
    assert batch["pixel_values_videos"].shape[:2] == (2, NUM_FRAMES)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(one_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if k != "index"}).loss
    assert torch.isfinite(loss)
