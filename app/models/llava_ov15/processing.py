"""Processor for LLaVA-OneVision-1.5 that needs neither torchvision nor a video processor.

Pixels follow the Qwen2-VL image processor's PIL path exactly: resize (bicubic, PIL) so both sides are multiples of
``patch_size * merge_size`` (28) and the area lies within ``[min_pixels, max_pixels]``, rescale by 1/255, normalise
with the CLIP mean/std, then cut 14x14 patches in 2x2-merge-window order with a temporal patch of 1 (each video
frame is its own grid row). Text follows ChatML; each ``<|image_pad|>`` / ``<|video_pad|>`` placeholder is expanded
to exactly ``t*h*w / merge**2`` copies, the number of features the vision tower returns for that item.

Files: ``preprocessor_config.json`` (Qwen2-VL keys: ``min_pixels``/``max_pixels`` or ``size``, ``patch_size``,
``temporal_patch_size``, ``merge_size``, ``image_mean``, ``image_std``), the tokenizer files, and
``chat_template.jinja`` (used when the tokenizer carries no template).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from app.data.geometry import smart_resize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# ChatML with Qwen2-VL's vision placeholders; a default system turn when the conversation has none.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: what `_frame` computes for each uint8 value of each channel (built once, not per clip)."""
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    table = (levels[None, :] - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    table.flags.writeable = False
    return table


class LlavaOV15ImageProcessor:
    """Frames/images -> (patch rows, grid). Inputs are uint8 arrays (C,H,W) / (N,C,H,W) or PIL images."""

    def __init__(
        self,
        min_pixels: int = 56 * 56,
        max_pixels: int = 28 * 28 * 1280,
        patch_size: int = 14,
        temporal_patch_size: int = 1,
        merge_size: int = 2,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        if temporal_patch_size != 1:
            raise ValueError("LLaVA-OneVision-1.5 uses temporal_patch_size=1.")
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.patch_size, self.temporal_patch_size, self.merge_size = patch_size, temporal_patch_size, merge_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    def to_dict(self) -> dict:
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "resample": 3,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LlavaOV15ImageProcessor:
        size = d.get("size") or {}
        return cls(
            min_pixels=d.get("min_pixels") or size.get("shortest_edge", 56 * 56),
            max_pixels=d.get("max_pixels") or size.get("longest_edge", 28 * 28 * 1280),
            patch_size=d.get("patch_size", 14),
            temporal_patch_size=d.get("temporal_patch_size", 1),
            merge_size=d.get("merge_size", 2),
            image_mean=d.get("image_mean", CLIP_MEAN),
            image_std=d.get("image_std", CLIP_STD),
        )

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)

    def tokens_per_frame(self, height: int, width: int) -> int:
        h, w = self.target_size(height, width)
        return (h // self.patch_size) * (w // self.patch_size) // self.merge_size**2

    def _frame(self, frame: np.ndarray | Image.Image) -> np.ndarray:
        """One frame -> normalised float32 (C, H', W'), exactly as the Qwen2-VL PIL path computes it."""
        if isinstance(frame, Image.Image):
            pil = frame.convert("RGB")
        else:
            arr = np.asarray(frame)
            if arr.dtype != np.uint8:
                raise TypeError(f"frames must be uint8, got {arr.dtype}")
            if arr.ndim != 3 or arr.shape[0] not in (1, 3):
                raise ValueError(f"a frame must be (C,H,W) with C in (1,3), got {arr.shape}")
            pil = Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)).squeeze()).convert("RGB")
        width, height = pil.size
        h, w = self.target_size(height, width)
        resized = np.asarray(pil.resize((w, h), resample=Image.Resampling.BICUBIC)).transpose(2, 0, 1)
        scaled = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
        return (scaled - mean) / std

    def _at_target_size(self, video: np.ndarray) -> bool:
        return (video.dtype == np.uint8 and video.ndim == 4 and video.shape[1] == 3
                and self.target_size(*video.shape[2:]) == tuple(video.shape[2:]))

    def _patches_at_size(self, video: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """`_frame` + `_patchify` for a uint8 clip already at its target size, with no PIL round trip (PIL's resize
        to the same size is a copy, so the pixels are identical). The loader's frames arrive like this (decord
        resized them to their `smart_resize` size). Patches are cut from the uint8 pixels, a quarter of the bytes to
        shuffle, and a uint8 has 256 values per channel, so `_frame`'s arithmetic is computed once per value and
        looked up: same float32 results, several times less CPU per sample at 448 px."""
        rows, grid = self._patchify(video)
        table = _normalise_table(tuple(self.image_mean), tuple(self.image_std))
        by_channel = rows.reshape(len(rows), 3, -1)  # a row is channel-major: c, then the p x p pixels
        out = np.empty(by_channel.shape, dtype=np.float32)
        for c in range(3):
            out[:, c, :] = table[c][by_channel[:, c, :]]
        return out.reshape(rows.shape), grid

    def _patchify(self, frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        """(T, C, H, W) -> rows (T*gh*gw, C*p*p) in merge-window order, grid (T, gh, gw)."""
        t, c, height, width = frames.shape
        p, m = self.patch_size, self.merge_size
        gh, gw = height // p, width // p
        x = frames.reshape(t, c, gh // m, m, p, gw // m, m, p)
        x = x.transpose(0, 2, 5, 3, 6, 1, 4, 7)  # t, gh/m, gw/m, m, m, c, p, p
        return np.ascontiguousarray(x.reshape(t * gh * gw, c * p * p)), (t, gh, gw)

    def preprocess_video(self, video: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        # Evaluation encodes each clip twice (prompt, then teacher-forced answer): reuse the pixels of the
        # very same array object. The cache holds the array itself, so an id can never be reused under it.
        cache = self.__dict__.setdefault("_recent", [])
        for arr, settings, result in cache:
            if arr is video and settings == (self.min_pixels, self.max_pixels):
                return result
        array = np.asarray(video)
        if array.ndim != 4:
            raise ValueError(f"a video must be (N,C,H,W) uint8, got shape {array.shape}")
        if self._at_target_size(array):
            result = self._patches_at_size(array)
        else:
            result = self._patchify(np.stack([self._frame(f) for f in array]))
        cache.append((video, (self.min_pixels, self.max_pixels), result))
        del cache[:-16]
        return result

    def preprocess_image(self, image: np.ndarray | Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        return self._patchify(self._frame(image)[None])

    def __call__(self, images=None, videos=None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, items, fn in (("", images, self.preprocess_image), ("_videos", videos, self.preprocess_video)):
            if not items:  # None or an empty list: no pixel inputs of this kind
                continue
            processed = [fn(item) for item in items]
            rows, grids = [r for r, _ in processed], [g for _, g in processed]
            grid_key = "image_grid_thw" if key == "" else "video_grid_thw"
            out[f"pixel_values{key}"] = torch.from_numpy(np.concatenate(rows))
            out[grid_key] = torch.tensor(grids, dtype=torch.long).view(-1, 3)
        return out


class LlavaOV15Processor:
    """Tokenizer + image processor; ``__call__(text, videos=None, images=None)`` -> model inputs."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: LlavaOV15ImageProcessor | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor or LlavaOV15ImageProcessor()
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
        missing = [t for t in (IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END) if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"tokenizer lacks the vision tokens {missing}")
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(VISION_START)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(VISION_END)

    # --- configuration knobs ---------------------------------------------------------------------------------------
    @property
    def min_pixels(self) -> int:
        return self.image_processor.min_pixels

    @min_pixels.setter
    def min_pixels(self, value: int) -> None:
        self.image_processor.min_pixels = int(value)

    @property
    def max_pixels(self) -> int:
        return self.image_processor.max_pixels

    @max_pixels.setter
    def max_pixels(self, value: int) -> None:
        self.image_processor.max_pixels = int(value)

    # --- text --------------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = False, **kwargs
    ):
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=tokenize,
            **kwargs,
        )

    @staticmethod
    def _expand(texts: list[str], placeholder: str, counts: list[int], kind: str) -> list[str]:
        n_placeholders = sum(t.count(placeholder) for t in texts)
        if n_placeholders != len(counts):
            raise ValueError(f"{n_placeholders} {placeholder} placeholders in the text but {len(counts)} {kind}s.")
        it = iter(counts)
        marker = "\x00VISION\x00"
        out = []
        for text in texts:
            pieces = text.split(placeholder)
            rebuilt = pieces[0]
            for piece in pieces[1:]:
                rebuilt += marker * next(it) + piece
            out.append(rebuilt.replace(marker, placeholder))
        return out

    def __call__(
        self,
        text: str | list[str],
        videos: list[np.ndarray] | None = None,
        images: list | None = None,
        padding: bool | str = True,
        padding_side: str | None = None,
        return_tensors: str = "pt",
        **tokenizer_kwargs,
    ) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        vision = self.image_processor(images=images, videos=videos)
        merge = self.image_processor.merge_size**2
        if "image_grid_thw" in vision:
            counts = [int(g.prod()) // merge for g in vision["image_grid_thw"]]
            texts = self._expand(texts, IMAGE_PAD, counts, "image")
        if "video_grid_thw" in vision:
            counts = [int(g.prod()) // merge for g in vision["video_grid_thw"]]
            texts = self._expand(texts, VIDEO_PAD, counts, "video")
        if padding_side is not None:
            tokenizer_kwargs["padding_side"] = padding_side
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors, **tokenizer_kwargs)
        return BatchFeature(data={**encoded, **vision})

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    # --- persistence -------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        config = {**self.image_processor.to_dict(), "processor_class": "LlavaOV15Processor"}
        (path / PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2) + "\n")
        (path / CHAT_TEMPLATE_FILE).write_text(self.chat_template)

    @classmethod
    def from_pretrained(cls, path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None,
                        trust_remote_code: bool = False):
        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        config_file = path / PREPROCESSOR_FILE
        image_processor = LlavaOV15ImageProcessor.from_dict(
            json.loads(config_file.read_text()) if config_file.exists() else {}
        )
        if min_pixels is not None:
            image_processor.min_pixels = int(min_pixels)
        if max_pixels is not None:
            image_processor.max_pixels = int(max_pixels)
        template_file = path / CHAT_TEMPLATE_FILE
        template = template_file.read_text() if template_file.exists() else None
        return cls(tokenizer, image_processor, chat_template=template)
