"""Configuration classes for LLaVA-OneVision-1.5 (RICE ViT + patch merger + Qwen3 decoder).

They read the official ``config.json`` layout unchanged:

* top level: ``model_type: "llavaonevision1_5"``, ``image_token_id``, ``video_token_id`` (and, when present,
  ``vision_start_token_id`` / ``vision_end_token_id``), ``vocab_size``;
* ``vision_config``: ``model_type: "rice_vit"`` with ``depth``, ``hidden_size``, ``num_heads``,
  ``intermediate_size``, ``patch_size``, ``spatial_merge_size``, ``temporal_patch_size``, ``text_hidden_size``...;
* ``text_config``: a Qwen3-style decoder config. The published file names it ``LLaVAOneVision1_5_text``; the
  architecture is exactly Qwen3's (q/k RMS norms, plain 1D RoPE), so it is read into transformers' ``Qwen3Config``.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig, Qwen3Config

# Keys the official text config carries that Qwen3Config either derives itself or must not receive verbatim.
_TEXT_KEYS_TO_DROP = ("model_type", "image_token_id", "video_token_id", "architectures", "auto_map")


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

    def __post_init__(self, **kwargs):
        if isinstance(self.text_config, dict):
            text = {k: v for k, v in self.text_config.items() if k not in _TEXT_KEYS_TO_DROP}
            # The published text config predates `rope_parameters`; Qwen3Config converts rope_theta itself.
            if text.get("rope_scaling") is None:
                text.pop("rope_scaling", None)
            self.text_config = text
        super().__post_init__(**kwargs)
        if self.vocab_size is None:
            self.vocab_size = self.text_config.vocab_size
        if self.vision_config.text_hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"vision_config.text_hidden_size ({self.vision_config.text_hidden_size}) must equal "
                f"text_config.hidden_size ({self.text_config.hidden_size})."
            )
