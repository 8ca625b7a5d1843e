"""transformers' native ``llava_onevision`` (SigLIP + Qwen2) behind the same processor interface as LLaVA-OV-1.5.

transformers' own LLaVA-OneVision video processor needs torchvision, which cannot import beside the CPU torch
wheel here; this processor does the video path with PIL/numpy instead: each frame resized (bicubic) to the tower's
square ``image_size``, rescaled, normalised with the SigLIP mean/std, stacked to ``pixel_values_videos``
``(batch, frames, 3, S, S)``. The ``<video>`` placeholder expands to ``frames * ceil(S/patch/2)**2 + 1`` tokens, the
number of features ``LlavaOnevisionModel.get_video_features`` returns (2x bilinear pooling plus one newline token).
Still images are not wired for this family (the project feeds videos).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
PREPROCESSOR_FILE = "preprocessor_config.json"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class OnevisionProcessor:
    def __init__(self, tokenizer, image_size: int = 384, patch_size: int = 14, image_mean=SIGLIP_MEAN,
                 image_std=SIGLIP_STD, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_size, self.patch_size = int(image_size), int(patch_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.chat_template = chat_template or CHAT_TEMPLATE
        if VIDEO_TOKEN not in tokenizer.get_vocab():
            raise ValueError(f"tokenizer lacks {VIDEO_TOKEN}")
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)

    def tokens_per_video(self, num_frames: int) -> int:
        pooled = math.ceil(self.image_size // self.patch_size / 2)
        return num_frames * pooled * pooled + 1

    def _frame(self, frame: np.ndarray) -> np.ndarray:
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3:
            raise ValueError(f"a frame must be uint8 (C,H,W), got {arr.dtype} {arr.shape}")
        pil = Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0))).convert("RGB")
        resized = np.asarray(pil.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC))
        scaled = (resized.transpose(2, 0, 1).astype(np.float64) / 255).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
        return (scaled - mean) / std

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = False, **kw):
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=add_generation_prompt,
            tokenize=tokenize, **kw,
        )

    def __call__(self, text, videos=None, images=None, padding=True, padding_side=None, return_tensors="pt",
                 **tokenizer_kwargs) -> BatchFeature:
        if images is not None:
            raise NotImplementedError("still images are not wired for the llava_onevision family; pass videos")
        texts = [text] if isinstance(text, str) else list(text)
        data = {}
        if videos is not None:
            frames = {len(v) for v in videos}
            if len(frames) > 1:
                raise ValueError(f"all videos of a batch need the same frame count for llava_onevision, got {frames}")
            n_placeholders = sum(t.count(VIDEO_TOKEN) for t in texts)
            if n_placeholders != len(videos):
                raise ValueError(f"{n_placeholders} {VIDEO_TOKEN} placeholders but {len(videos)} videos")
            counts = iter(self.tokens_per_video(len(v)) for v in videos)
            texts = [
                t.split(VIDEO_TOKEN)[0]
                + "".join(VIDEO_TOKEN * next(counts) + piece for piece in t.split(VIDEO_TOKEN)[1:])
                for t in texts
            ]
            data["pixel_values_videos"] = torch.from_numpy(
                np.stack([np.stack([self._frame(f) for f in v]) for v in videos])
            )
        if padding_side is not None:
            tokenizer_kwargs["padding_side"] = padding_side
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors, **tokenizer_kwargs)
        return BatchFeature(data={**encoded, **data})

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        config = {
            "processor_class": "OnevisionProcessor", "size": {"height": self.image_size, "width": self.image_size},
            "patch_size": self.patch_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
        }
        (path / PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (path / "chat_template.jinja").write_text(self.chat_template)

    @classmethod
    def from_pretrained(cls, path, trust_remote_code: bool = False) -> OnevisionProcessor:
        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        cfg = json.loads((path / PREPROCESSOR_FILE).read_text()) if (path / PREPROCESSOR_FILE).exists() else {}
        size = cfg.get("size", {})
        template = path / "chat_template.jinja"
        return cls(
            tokenizer,
            image_size=size.get("height", size.get("shortest_edge", 384)),
            patch_size=cfg.get("patch_size", 14),
            image_mean=cfg.get("image_mean", SIGLIP_MEAN),
            image_std=cfg.get("image_std", SIGLIP_STD),
            chat_template=template.read_text() if template.exists() else None,
        )
