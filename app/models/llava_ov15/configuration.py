"""Configuration classes for LLaVA-OneVision-1.5 (RICE ViT + patch merger + Qwen3 decoder).

They read two ``config.json`` layouts and always write the first:

**Hub layout** (the published checkpoints, read unchanged):

* top level: ``model_type: "llavaonevision1_5"``, ``image_token_id``, ``video_token_id`` (and, when present,
  ``vision_start_token_id`` / ``vision_end_token_id``), ``vocab_size``;
* ``vision_config``: ``model_type: "rice_vit"`` with ``depth``, ``hidden_size``, ``num_heads``,
  ``intermediate_size``, ``patch_size``, ``spatial_merge_size``, ``temporal_patch_size``, ``text_hidden_size``...;
* ``text_config``: a Qwen3-style decoder config. The published file names it ``LLaVAOneVision1_5_text``; the
  architecture is exactly Qwen3's (q/k RMS norms, plain 1D RoPE), so it is read into transformers' ``Qwen3Config``.

**Transformers-integration layout** (transformers PR #48896, ``model_type: "llava_onevision1_5"``): the text config
carries ``rope_parameters`` instead of ``rope_theta``/``rope_scaling`` (``Qwen3Config`` reads either), and the vision
config names the merger's output width ``out_hidden_size`` and carries Qwen2.5-VL window-attention keys
(``window_size``, ``fullatt_block_indexes``, ``tokens_per_second``) that RICE never uses. Both are normalised here to
the hub layout, so ``save_pretrained`` writes the hub layout whatever was read. The matching weight-key renames live
in :func:`app.models.llava_ov15.modeling.checkpoint_layout_conversions`.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig, Qwen3Config

# Keys the official text config carries that Qwen3Config either derives itself or must not receive verbatim.
_TEXT_KEYS_TO_DROP = ("model_type", "image_token_id", "video_token_id", "architectures", "auto_map")
# The model_type of the pending transformers integration (PR #48896); read as ours, never written.
INTEGRATION_MODEL_TYPE = "llava_onevision1_5"
# Vision keys of the integration layout that RICE has no use for: it inherits Qwen2.5-VL's vision config, whose
# window attention RICE does not have (every block attends over the whole frame), and a vision model_type of its own.
_INTEGRATION_VISION_KEYS_TO_DROP = ("model_type", "window_size", "fullatt_block_indexes", "tokens_per_second")


def hub_layout_vision_config(vision: dict[str, Any]) -> dict[str, Any]:
    """A vision-config dict of either layout, as the hub layout spells it (``text_hidden_size``, no window keys)."""
    if "out_hidden_size" not in vision and vision.get("model_type", "rice_vit") == "rice_vit":
        return vision
    vision = {k: v for k, v in vision.items() if k not in _INTEGRATION_VISION_KEYS_TO_DROP}
    out = vision.pop("out_hidden_size", None)
    if out is not None:
        if vision.setdefault("text_hidden_size", out) != out:
            raise ValueError(
                f"vision_config has out_hidden_size={out} and text_hidden_size={vision['text_hidden_size']}; "
                "they name the same width (the merger's output) and must agree."
            )
    if not vision.get("attention_dropout"):  # RICE has no attention dropout; 0.0 is the integration's default
        vision.pop("attention_dropout", None)
    if "hidden_size" in vision:  # the hub layout repeats the width as embed_dim
        vision.setdefault("embed_dim", vision["hidden_size"])
    return vision


@strict
class RiceViTConfig(PretrainedConfig):
    """RICE vision tower: patch-14 conv, one CLS token per image/frame, 2D rotary, pre-layernorm, fused-qkv blocks.

    ``text_hidden_size`` is the output width of the 2x2 patch merger (the LLM hidden size).
    """

    model_type = "rice_vit"
    base_config_key = "vision_config"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "depth"}

    depth: int = 24
    embed_dim: int = 1024
    hidden_size: int = 1024
    hidden_act: str = "gelu"
    intermediate_size: int = 4096
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    text_hidden_size: int = 4096
    rope_theta: float = 10000.0

    def __post_init__(self, **kwargs):
        if self.temporal_patch_size != 1:
            raise ValueError(
                f"RICE ViT encodes every frame on its own (temporal_patch_size=1); got {self.temporal_patch_size}."
            )
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError("hidden_size / num_heads must be a multiple of 4 for the 2D rotary embedding.")
        super().__post_init__(**kwargs)


@strict
class LlavaOV15Config(PretrainedConfig):
    """Composite config: ``vision_config`` (:class:`RiceViTConfig`) + ``text_config`` (``Qwen3Config``)."""

    model_type = "llavaonevision1_5"
    sub_configs_defaults = {"vision_config": RiceViTConfig, "text_config": Qwen3Config}
    keys_to_ignore_at_inference = ["past_key_values"]

    text_config: dict | PretrainedConfig | None = None
    vision_config: dict | PretrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vocab_size: int | None = None
    tie_word_embeddings: bool = False

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> tuple[dict[str, Any], dict]:
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        # Read the integration's model_type as ours before from_pretrained compares them and warns of a mismatch.
        if config_dict.get("model_type") == INTEGRATION_MODEL_TYPE:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def __post_init__(self, **kwargs):
        if kwargs.get("model_type") == INTEGRATION_MODEL_TYPE:  # e.g. from_json_file / from_dict of that layout
            kwargs["model_type"] = self.model_type
        if isinstance(self.text_config, dict):
            text = {k: v for k, v in self.text_config.items() if k not in _TEXT_KEYS_TO_DROP}
            # The published text config predates `rope_parameters`; Qwen3Config converts rope_theta itself.
            if text.get("rope_scaling") is None:
                text.pop("rope_scaling", None)
            self.text_config = text
        if isinstance(self.vision_config, dict):
            self.vision_config = dict(hub_layout_vision_config(self.vision_config))
            # A layout that leaves the merger width out (e.g. equal to its class default) can only mean the LLM's.
            if "text_hidden_size" not in self.vision_config and isinstance(self.text_config, dict):
                if "hidden_size" in self.text_config:
                    self.vision_config["text_hidden_size"] = self.text_config["hidden_size"]
        super().__post_init__(**kwargs)
        if self.vocab_size is None:
            self.vocab_size = self.text_config.vocab_size
        if self.vision_config.text_hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"vision_config.text_hidden_size ({self.vision_config.text_hidden_size}) must equal "
                f"text_config.hidden_size ({self.text_config.hidden_size})."
            )
