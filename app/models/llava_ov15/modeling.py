"""LLaVA-OneVision-1.5 on transformers 5: RICE ViT + 2x2 patch merger + transformers' own Qwen3 decoder.

Module names equal the official (hub) checkpoint keys, so ``from_pretrained`` reads the published safetensors shards
with no renaming:

* ``visual.*``   :class:`RiceVisionModel` (``patch_embed``, ``class_embedding``, ``class_pos_emb``,
  ``pre_layernorm``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``merger.{ln_q,mlp.0,mlp.2}``);
* ``model.*``    transformers' ``Qwen3Model`` (``embed_tokens``, ``layers.N...``, ``norm``);
* ``lm_head.*``  untied output projection.

Checkpoints in the layout of the pending transformers integration (PR #48896: ``model.visual.*``,
``model.language_model.*``, ``lm_head.*``; see :func:`checkpoint_layout_conversions`) load through the same
``from_pretrained``, renamed on the fly; ``save_pretrained`` always writes the hub layout above.

Frames and images. Every image and every video frame is its own attention segment with its own CLS token, exactly
as a standalone image would be encoded; the CLS outputs are dropped before the merger. Segments of the same
patch grid are stacked into one ``(segments, 1 + h*w, dim)`` batch, so attention never needs a mask, and never a
dense one over all the patches of a batch (one batch per distinct grid). The published inference code does the same
thing with a packed sequence but strips the CLS rows at the wrong offsets for every segment after the first; this
implementation equals that code for text and single images, and equals it with that removal fixed for videos and
multi-image batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen3Model
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.core_model_loading import ConversionOps, WeightConverter, WeightRenaming, WeightTransform
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.deprecation import deprecate_kwarg

from .configuration import LlavaOV15Config, RiceViTConfig

IGNORE_INDEX = -100


@dataclass
class SupervisedCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` + ``token_nll``: with labels, each position's NLL of the next (labelled) token,
    0 elsewhere, shape (batch, seq); ``logits`` then holds only the supervised rows, (N, vocab)."""

    token_nll: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------------------------
# Vision tower
# --------------------------------------------------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_vision_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (segments, heads, length, head_dim); cos/sin: (length, head_dim). Computed in fp32, cast back."""
    dtype = x.dtype
    xf = x.float()
    out = xf * cos[None, None] + _rotate_half(xf) * sin[None, None]
    return out.to(dtype)


def _eager_attention(
    module: nn.Module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs
):
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class RicePatchEmbed(nn.Module):
    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.in_channels = config.in_channels
        self.patch_size = config.patch_size
        self.proj = nn.Conv2d(
            config.in_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.view(-1, self.in_channels, self.patch_size, self.patch_size)
        x = self.proj(x.to(self.proj.weight.dtype))
        return x.view(x.shape[0], -1)


class RiceAttention(nn.Module):
    """Bidirectional attention with a fused qkv projection over a batch of equal-length segments."""

    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_key_value_groups = 1
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        segments, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(segments, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (segments, heads, length, head_dim)
        q = _apply_vision_rotary(q, cos, sin)
        k = _apply_vision_rotary(k, cos, sin)
        implementation = self.config._attn_implementation or "sdpa"
        attention: Callable = _eager_attention
        if implementation != "eager":
            attention = ALL_ATTENTION_FUNCTIONS[implementation]
        out, _ = attention(self, q, k, v, None, scaling=self.scaling, dropout=0.0, is_causal=False)
        return self.proj(out.reshape(segments, length, -1))


class RiceMlp(nn.Module):
    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RiceBlock(GradientCheckpointingLayer):
    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = RiceAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = RiceMlp(config)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), cos, sin)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class RicePatchMerger(nn.Module):
    """LayerNorm per patch, concatenate each 2x2 window (4 consecutive rows), MLP to the LLM width."""

    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.merged_size = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_size, self.merged_size),
            nn.GELU(),
            nn.Linear(self.merged_size, config.text_hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.merged_size))


class RiceVisionModel(nn.Module):
    """RICE ViT + merger. ``forward(pixel_values (N, C*p*p), grid_thw (items, 3)) -> (N / merge**2, text_hidden)``.

    ``pixel_values`` rows are the patches of every frame of every item, in order, each frame's patches in
    2x2-merge-window order (what the Qwen2-VL-style processor produces).
    """

    def __init__(self, config: RiceViTConfig) -> None:
        super().__init__()
        self.config = config
        self.spatial_merge_size = config.spatial_merge_size
        self.head_dim = config.hidden_size // config.num_heads
        self.patch_embed = RicePatchEmbed(config)
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.class_pos_emb = nn.Parameter(torch.empty(1, self.head_dim // 2))
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList([RiceBlock(config) for _ in range(config.depth)])
        self.merger = RicePatchMerger(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.proj.weight.dtype

    def _rotary(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape (1 + h*w, head_dim): the CLS row uses the learned ``class_pos_emb`` angles."""
        m = self.spatial_merge_size
        quarter = self.head_dim // 4
        inv_freq = 1.0 / (
            self.config.rope_theta
            ** (torch.arange(0, 2 * quarter, 2, dtype=torch.float, device=device) / (2 * quarter))
        )
        rows = torch.arange(h, device=device).view(h // m, m, 1, 1).expand(h // m, m, w // m, m)
        cols = torch.arange(w, device=device).view(1, 1, w // m, m).expand(h // m, m, w // m, m)
        rows = rows.permute(0, 2, 1, 3).reshape(-1).float()
        cols = cols.permute(0, 2, 1, 3).reshape(-1).float()
        angles = torch.cat([rows[:, None] * inv_freq[None], cols[:, None] * inv_freq[None]], dim=-1)
        angles = torch.cat([self.class_pos_emb.float(), angles], dim=0)
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos(), emb.sin()

    def encode_patches(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """ViT outputs per patch (CLS rows removed), shape (N, hidden), in input order."""
        grid = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
        expected = sum(t * h * w for t, h, w in grid)
        if pixel_values.shape[0] != expected:
            raise ValueError(f"pixel rows ({pixel_values.shape[0]}) do not match grid_thw total ({expected}).")
        patches = self.patch_embed(pixel_values)
        dim = patches.shape[-1]

        # Group every frame (segment) by its patch grid; each group runs as one unmasked batch.
        groups: dict[tuple[int, int], list[int]] = {}
        offset = 0
        for t, h, w in grid:
            for _ in range(t):
                groups.setdefault((h, w), []).append(offset)
                offset += h * w
        if len(groups) == 1:
            ((h, w), starts), = groups.items()
            return self._encode_group(patches.view(len(starts), h * w, dim), h, w).reshape(-1, dim)
        out = patches.new_empty(patches.shape)
        for (h, w), starts in groups.items():
            index = (torch.tensor(starts, device=patches.device)[:, None]
                     + torch.arange(h * w, device=patches.device)[None]).reshape(-1)
            encoded = self._encode_group(patches.index_select(0, index).view(len(starts), h * w, dim), h, w)
            out = out.index_copy(0, index, encoded.reshape(-1, dim))
        return out

    def _encode_group(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = self.pre_layernorm(torch.cat([cls, x], dim=1))
        cos, sin = self._rotary(h, w, x.device)
        for block in self.blocks:
            x = block(x, cos, sin)
        return x[:, 1:]

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.merger(self.encode_patches(pixel_values, grid_thw))


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint layouts
# --------------------------------------------------------------------------------------------------------------------


class _ClassEmbeddingAsVector(ConversionOps):
    """``nn.Embedding(1, d).weight`` of shape ``(1, d)`` -> the hub layout's 1-D ``(d,)`` parameter.

    One-way: no ``reverse_op``, because this layout is only ever read (see ``_load_pretrained_model``).
    """

    def convert(
        self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str], **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        tensors = next(iter(input_dict.values()))
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        if tensor.dim() != 2 or tensor.shape[0] != 1:
            raise ValueError(f"expected a (1, dim) class embedding, got shape {tuple(tensor.shape)}")
        return {target_patterns[0]: tensor.reshape(-1)}


INTEGRATION_KEY_PREFIXES = ("model.visual.", "model.language_model.")


def is_integration_layout(keys: Iterable[str]) -> bool:
    """Whether checkpoint keys are in the transformers-integration layout (hub keys never start with these)."""
    return any(key.startswith(INTEGRATION_KEY_PREFIXES) for key in keys)


def _checkpoint_keys(state_dict: dict | None, checkpoint_files: list[str] | None) -> Iterator[str]:
    """Key names only: safetensors headers, so a sharded 8B checkpoint costs a few small reads."""
    if state_dict is not None:
        yield from state_dict
    for file in checkpoint_files or ():
        if str(file).endswith(".safetensors"):
            with safe_open(str(file), "pt") as handle:
                yield from handle.keys()


def checkpoint_layout_conversions() -> list[WeightTransform]:
    """Renames that read the transformers-integration layout (PR #48896) into our (hub-layout) module names.

    Applied only to a checkpoint that :func:`is_integration_layout` recognises, so a hub-layout load is exactly
    transformers' own and no flag is needed. Handled, across the PR's revisions:

    * ``model.visual.*`` -> ``visual.*``, ``model.language_model.*`` -> ``model.*`` (``lm_head.*`` is shared);
    * merger ``linear_fc1`` / ``linear_fc2`` (its conversion script's names) -> ``mlp.0`` / ``mlp.2``;
    * ``class_embedding`` / ``class_pos_emb`` stored as ``nn.Embedding(1, ...)`` (``....weight``, shape
      ``(1, dim)``) -> our parameters, ``(hidden,)`` and ``(1, head_dim / 2)``.

    Fresh objects on every call: transformers records on them which ones matched a load.
    """
    return [
        WeightRenaming(r"^model\.visual\.", "visual."),
        WeightRenaming(r"^model\.language_model\.", "model."),
        WeightRenaming(r"^visual\.merger\.linear_fc1\.", "visual.merger.mlp.0."),
        WeightRenaming(r"^visual\.merger\.linear_fc2\.", "visual.merger.mlp.2."),
        WeightRenaming(r"^visual\.class_pos_emb\.weight", "visual.class_pos_emb"),
        WeightConverter(r"^visual\.class_embedding\.weight", "visual.class_embedding", [_ClassEmbeddingAsVector()]),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Full model
# --------------------------------------------------------------------------------------------------------------------


class LlavaOV15PreTrainedModel(PreTrainedModel):
    config_class = LlavaOV15Config
    config: LlavaOV15Config
    base_model_prefix = ""
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen3DecoderLayer", "RiceBlock"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @classmethod
    def _load_pretrained_model(
        cls,
        model: PreTrainedModel,
        state_dict: dict | None,
        checkpoint_files: list[str] | None,
        load_config: Any,
        expected_keys: list[str] | None = None,
    ) -> Any:
        # Every load path (plain, bitsandbytes 4-bit, device_map, ZeRO-3) reads weights through this hook with the
        # conversions in load_config. `from_pretrained(key_mapping=...)` could only rename, not reshape; registering
        # the conversions globally would make transformers and PEFT apply them in reverse when saving.
        if not is_integration_layout(_checkpoint_keys(state_dict, checkpoint_files)):
            return super()._load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys)
        mapping = [*checkpoint_layout_conversions(), *(load_config.weight_mapping or [])]
        load_config = replace(load_config, weight_mapping=mapping)
        result = super()._load_pretrained_model(model, state_dict, checkpoint_files, load_config, expected_keys)
        # transformers keeps the conversions that matched, to write a checkpoint back in the layout it came in;
        # forgetting them makes save_pretrained write the hub layout (our module names) whatever was read.
        model._weight_conversions = []
        return result

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, RiceVisionModel):
            std = module.config.initializer_range
            init.normal_(module.class_embedding, mean=0.0, std=module.config.hidden_size**-0.5)
            init.normal_(module.class_pos_emb, mean=0.0, std=std)


class LlavaOV15ForConditionalGeneration(LlavaOV15PreTrainedModel, GenerationMixin):
    """Vision features are scattered into the ``<|image_pad|>`` / ``<|video_pad|>`` positions of ``input_ids``."""

    _tied_weights_keys = None
    # With labels, compute logits only at supervised positions (see `_supervised_loss`). False gives the plain
    # full-sequence logits + transformers' loss: the reference the tests and benchmarks/head_memory.py compare to.
    supervised_logits_only: bool = True

    def __init__(self, config: LlavaOV15Config) -> None:
        super().__init__(config)
        self.visual = RiceVisionModel(config.vision_config)
        self.model = Qwen3Model(config.text_config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    # --- embeddings plumbing used by PEFT / generate -----------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> nn.Module:
        return self.model

    # --- vision ----------------------------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values.to(self.visual.dtype), image_grid_thw)

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values_videos.to(self.visual.dtype), video_grid_thw)

    @staticmethod
    def _scatter(
        inputs_embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, features: torch.Tensor, kind: str
    ) -> torch.Tensor:
        mask = input_ids == token_id
        n_tokens, n_features = int(mask.sum()), features.shape[0]
        if n_tokens != n_features:
            raise ValueError(
                f"{kind} features and {kind} tokens do not match: {n_tokens} placeholder tokens (id {token_id}) in "
                f"input_ids but {n_features} {kind} features from the grids. Expand each placeholder to "
                f"t*h*w/merge**2 tokens (the processor does this) and pass the matching pixel values."
            )
        mask = mask.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.device, inputs_embeds.dtype))

    def embed_multimodal(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values needs image_grid_thw.")
            features = self.get_image_features(pixel_values, image_grid_thw)
            inputs_embeds = self._scatter(inputs_embeds, input_ids, self.config.image_token_id, features, "image")
        if pixel_values_videos is not None:
            if video_grid_thw is None:
                raise ValueError("pixel_values_videos needs video_grid_thw.")
            features = self.get_video_features(pixel_values_videos, video_grid_thw)
            inputs_embeds = self._scatter(inputs_embeds, input_ids, self.config.video_token_id, features, "video")
        return inputs_embeds

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids (or inputs_embeds).")
            inputs_embeds = self.embed_multimodal(
                input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
            )
        elif pixel_values is not None or pixel_values_videos is not None:
            raise ValueError("Pixel inputs need input_ids to locate the placeholder tokens, not inputs_embeds.")

        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        loss = token_nll = None
        if labels is not None and self.supervised_logits_only:
            loss, token_nll, logits = self._supervised_loss(hidden_states, labels, kwargs.get("num_items_in_batch"))
        else:
            if isinstance(logits_to_keep, int) and logits_to_keep > 0:
                hidden_states = hidden_states[:, -logits_to_keep:]
            elif isinstance(logits_to_keep, torch.Tensor):
                hidden_states = hidden_states[:, logits_to_keep]
            logits = self.lm_head(hidden_states)
            if labels is not None:
                loss = self.loss_function(
                    logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
                )
        return SupervisedCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            token_nll=token_nll,
        )

    def _supervised_loss(
        self, hidden_states: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """transformers' causal-LM loss, with ``lm_head`` applied only where the next token is labelled.

        The loss reads the logits of position i only when token i+1 carries a label, so the head (and the fp32
        upcast, and its gradient) runs on the answer tokens alone instead of every vision and prompt position:
        at 16 frames x 256 tokens and a 151,936-token vocabulary that is ~1.3 GB of bf16 logits per sample not
        made. Same reduction as ``ForCausalLMLoss``: mean over labelled tokens, or sum / ``num_items_in_batch``
        under gradient accumulation. Returns (loss, per-position NLL (B, L) with 0 where unlabelled, the
        supervised rows' logits (N, vocab)).
        """
        targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.lm_head(hidden_states[keep]).float()
        nll = nn.functional.cross_entropy(logits, targets[keep].to(logits.device), reduction="none")
        if num_items_in_batch is not None:
            loss = nll.sum() / (num_items_in_batch.to(nll.device) if torch.is_tensor(num_items_in_batch)
                                else num_items_in_batch)
        else:
            loss = nll.mean()  # nan on a batch without labels, as transformers' mean would be
        token_nll = torch.zeros(keep.shape, dtype=nll.dtype, device=nll.device).masked_scatter(keep, nll.detach())
        return loss, token_nll, logits


def vision_tokens_for_grid(grid_thw: torch.Tensor | list, merge_size: int = 2) -> list[int]:
    """Number of LLM placeholder tokens per item: t*h*w / merge**2."""
    rows = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else grid_thw
    return [int(t) * int(h) * int(w) // (merge_size**2) for t, h, w in rows]


__all__ = [
    "LlavaOV15ForConditionalGeneration",
    "LlavaOV15PreTrainedModel",
    "SupervisedCausalLMOutput",
    "RiceVisionModel",
    "checkpoint_layout_conversions",
    "is_integration_layout",
    "vision_tokens_for_grid",
]
