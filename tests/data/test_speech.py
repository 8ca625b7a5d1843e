"""`<speech>` resolved by a real (tiny, random) wav2vec2 CTC model through transformers' ASR pipeline."""

import json
import shutil
from pathlib import Path

import pytest

from app.config import load_config
from app.data import ego4d, speech
from app.data.load import load_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_asr(tmp_path_factory) -> Path:
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out = tmp_path_factory.mktemp("asr")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab |= {c: i + 5 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}
    (out / "vocab.json").write_text(json.dumps(vocab))
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, pad_token_id=0,
    )
    Wav2Vec2ForCTC(cfg).save_pretrained(out)
    processor = Wav2Vec2Processor(
        feature_extractor=Wav2Vec2FeatureExtractor(sampling_rate=16000),
        tokenizer=Wav2Vec2CTCTokenizer(str(out / "vocab.json")),
    )
    processor.save_pretrained(out)
    return out


def test_asr_replaces_speech_and_counts_unreadable_audio(tmp_path, sample_dir, tiny_asr):
    videos = tmp_path / "videos"
    videos.mkdir()
    clip = sorted((sample_dir / "videos").glob("*.mp4"))[0]
    shutil.copy(clip, videos / "a.mp4")
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEgarbage")
    convs = [{"from": "human", "value": "<image>\n<speech>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    records = [
        {"id": "track", "video": "a.mp4", "conversations": convs},  # mp4's own audio track
        {"id": "broken", "video": "a.mp4", "audio": "broken.wav", "conversations": convs},
        {"id": "plain", "video": "a.mp4", "conversations": [convs[0] | {"value": "<image>\nHi"}, convs[1]]},
    ]
    (tmp_path / "Ego4D.json").write_text(json.dumps(records))
    cfg = load_config(
        REPO / "configs" / "tiny_cpu.yaml",
        [
            f"data.data_path={tmp_path / 'Ego4D.json'}",
            f"data.video_folder={videos}",
            "data.eval_ids_file=null",
            "data.speech_strategy=transcript",
            f"data.asr_model={tiny_asr}",
            f"data.frame_cache_dir={tmp_path / 'frames'}",
        ],
    )
    report = load_data(cfg)
    assert sorted(r.id for r in report.records) == ["plain", "track"]
    assert report.skipped[speech.ASR_FAILED] == 1 and "broken" in report.examples[speech.ASR_FAILED][0]
    track = next(r for r in report.records if r.id == "track")
    text = track.turns[0].value
    assert ego4d.SPEECH_TOKEN not in text
    assert text.startswith("<image>\n") and text.endswith("What colour?")
