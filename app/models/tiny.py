"""Tiny, seeded twins of the supported families, built offline and saved in their checkpoint layouts.

``build_tiny_llava_ov15(out_dir)`` writes ``config.json`` (model_type ``llavaonevision1_5``), ``model.safetensors``
(keys ``visual.*``, ``model.*``, ``lm_head.*``), ``generation_config.json``, the tokenizer files and the processor
files; it is loaded back with the same ``load_model_and_processor`` as the 8B checkpoint. The tokenizer is a small
byte-level BPE trained here on a built-in English corpus, with the real Qwen special tokens (their ids differ from
the 151k vocabulary; all code reads ids from the tokenizer/config).

Both builders are idempotent: a complete directory is left alone; otherwise the files are written to a temporary
sibling directory that is renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "brown", "grey"]
DIRECTIONS = ["left", "right", "up", "down", "forward", "backward", "clockwise", "still"]
SHAPES = ["circle", "square", "triangle", "star", "ball", "box", "cube", "ring"]
OBJECTS = ["cup", "knife", "pan", "door", "hand", "phone", "book", "bottle", "plate", "table", "bowl", "spoon"]
VERBS = ["picks up", "puts down", "opens", "closes", "cuts", "washes", "moves", "holds", "turns", "pours"]
QUESTIONS = [
    "What colour is the moving object?",
    "Which direction does the object move?",
    "What shape is the object?",
    "How many objects are there?",
    "What is the person holding?",
    "What did I pick up?",
    "Where did I put the cup?",
    "What happens in the video?",
    "Describe the clip in one word.",
]
FILLER = [
    "You are a helpful assistant.",
    "The camera wearer is in a kitchen.",
    "The answer is short.",
    "I see a small object on the table.",
    "Yes. No. One. Two. Three. Four. Five.",
    "system user assistant video image question answer frame clip",
]
TINY_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)
COMPLETE_MARKER = ".complete"
# Bumped whenever the builder's output changes, so a cache built by an older version is rebuilt.
BUILDER_VERSION = "2"
# A trained LM head produces logits several nats apart; the default 0.02 init on a 64-wide hidden state gives
# logits within ~1 nat of each other, and with the head frozen (as in LoRA) no answer could ever become likely.
TINY_LM_HEAD_STD = 0.25


def tiny_corpus() -> list[str]:
    """A small deterministic English corpus covering the synthetic QA vocabulary."""
    lines = list(QUESTIONS) + list(FILLER)
    for colour in COLOURS:
        for shape in SHAPES:
            lines.append(f"The {colour} {shape} is moving.")
            lines.append(f"It is a {colour} {shape}.")
        lines.append(colour)
        lines.append(colour.capitalize())
    for direction in DIRECTIONS:
        lines += [f"The object moves {direction}.", direction, direction.capitalize()]
    for verb in VERBS:
        for obj in OBJECTS:
            lines.append(f"I {verb} the {obj}.")
    for shape in SHAPES:
        lines += [shape, shape.capitalize()]
    return lines * 3


def train_tiny_tokenizer(vocab_size: int = 640):
    """Byte-level BPE trained offline with the ``tokenizers`` library, wrapped as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .llava_ov15.processing import CHAT_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(TINY_SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _atomic_build(out_dir: Path, write: Callable[[Path], None]) -> Path:
    out_dir = Path(out_dir)
    if _complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        write(tmp)
        (tmp / COMPLETE_MARKER).write_text(BUILDER_VERSION + "\n")
        if out_dir.exists():
            if _complete(out_dir):  # another process finished first
                shutil.rmtree(tmp)
                return out_dir
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if _complete(out_dir):
            return out_dir
        raise
    return out_dir


def _complete(out_dir: Path) -> bool:
    marker = out_dir / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == BUILDER_VERSION


def _trained_head_scale(model: torch.nn.Module, seed: int) -> None:
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, TINY_LM_HEAD_STD, generator=torch.Generator().manual_seed(seed))


def tiny_llava_ov15_config(tokenizer, vision_layers: int = 2, vision_width: int = 32, text_layers: int = 2,
                           text_width: int = 64):
    from .llava_ov15 import LlavaOV15Config

    vocab = -(-len(tokenizer) // 64) * 64
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS}
    return LlavaOV15Config(
        text_config=dict(
            vocab_size=vocab, hidden_size=text_width, intermediate_size=2 * text_width,
            num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2,
            head_dim=text_width // 4, hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=False, initializer_range=0.02,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=None,
        ),
        vision_config=dict(
            depth=vision_layers, embed_dim=vision_width, hidden_size=vision_width, hidden_act="gelu",
            intermediate_size=2 * vision_width, num_heads=2, in_channels=3, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=1, initializer_range=0.02, layer_norm_eps=1e-5, text_hidden_size=text_width,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vocab_size=vocab, tie_word_embeddings=False,
    )


def build_tiny_llava_ov15(out_dir: Path, seed: int = 0, min_pixels: int = 56 * 56,
                          max_pixels: int = 112 * 112, vision_width: int = 32) -> Path:
    """Seeded random LLaVA-OneVision-1.5 twin (ViT 2 x ``vision_width``, LLM 2x64) + tokenizer + processor."""
    from transformers import GenerationConfig

    from .llava_ov15 import LlavaOV15ForConditionalGeneration, LlavaOV15ImageProcessor, LlavaOV15Processor

    def write(tmp: Path) -> None:
        tokenizer = train_tiny_tokenizer()
        config = tiny_llava_ov15_config(tokenizer, vision_width=vision_width)
        torch.manual_seed(seed)
        model = LlavaOV15ForConditionalGeneration(config).eval()
        _trained_head_scale(model, seed)
        model.generation_config = GenerationConfig(
            eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id],
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            do_sample=False,
        )
        model.save_pretrained(tmp)
        processor = LlavaOV15Processor(
            tokenizer, LlavaOV15ImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
        )
        processor.save_pretrained(tmp)

    return _atomic_build(Path(out_dir), write)


def build_tiny_llava_onevision(out_dir: Path, seed: int = 0) -> Path:
    """Seeded random transformers-native ``llava_onevision`` (SigLIP + Qwen2) twin with the same tokenizer."""
    from transformers import GenerationConfig, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from .onevision import IMAGE_TOKEN, VIDEO_TOKEN, OnevisionProcessor

    def write(tmp: Path) -> None:
        tokenizer = train_tiny_tokenizer()
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
        vocab = -(-len(tokenizer) // 64) * 64
        config = LlavaOnevisionConfig(
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=28, patch_size=14, vision_use_head=False,
            ),
            text_config=dict(
                model_type="qwen2", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            ),
            image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=[[28, 28]],
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = LlavaOnevisionForConditionalGeneration(config).eval()
        _trained_head_scale(model, seed)
        model.generation_config = GenerationConfig(
            eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id],
            pad_token_id=tokenizer.pad_token_id, do_sample=False,
        )
        model.save_pretrained(tmp)
        OnevisionProcessor(tokenizer, image_size=28).save_pretrained(tmp)

    return _atomic_build(Path(out_dir), write)
