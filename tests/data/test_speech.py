"""`<speech>` resolved by a real (tiny, random) wav2vec2 CTC model through transformers' ASR pipeline."""

import json
import shutil
from pathlib import Path

from app.config import load_config
from app.data import ego4d, speech
from app.data.load import load_data

REPO = Path(__file__).resolve().parents[2]


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
