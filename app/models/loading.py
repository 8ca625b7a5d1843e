"""Load a model family in one of three modes, and attach LoRA adapters.

* ``baseline``: full-precision (``torch_dtype``) weights, evaluation only.
* ``lora``:     same weights (typically bf16), LoRA adapters on the LLM.
* ``qlora``:    LLM linears in 4-bit (bitsandbytes: NF4 + double quantisation unless configured otherwise),
  compute dtype ``compute_dtype``;
  the vision tower, the merger/projector and ``lm_head`` stay unquantised.

Families: ``llava_ov15`` (default; :mod:`app.models.llava_ov15`) and ``llava_onevision`` (transformers' SigLIP +
Qwen2). Both return ``(model, processor)``, with a processor taking ``text`` and ``videos`` (uint8 ``(N,3,H,W)``).
``llava_ov15`` reads checkpoints of the hub layout and of the transformers-integration layout (PR #48896) in every
mode, with no flag (the model class renames on load), and saves the hub layout.

LoRA targets the LLM's q/k/v/o/gate/up/down projections only; the merger (``visual.merger`` /
``model.multi_modal_projector``) is trained in full when ``train_merger`` is set (PEFT ``modules_to_save``, so it is
saved with the adapter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from app.errors import UserError

FAMILIES = ("llava_ov15", "llava_onevision")
MODES = ("baseline", "lora", "qlora")
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FamilySpec:
    """Where things live in a family's module tree."""

    llm_layers_prefix: str  # module-name prefix of the decoder layers
    merger: str  # the vision->LLM projector
    skip_4bit: tuple[str, ...]  # module-name prefixes kept out of 4-bit (transformers 5 matches from the start)
    vision_prefixes: tuple[str, ...] = field(default=())


FAMILY_SPECS = {
    "llava_ov15": FamilySpec(
        llm_layers_prefix="model.layers", merger="visual.merger", skip_4bit=("visual", "lm_head"),
        vision_prefixes=("visual",),
    ),
    "llava_onevision": FamilySpec(
        llm_layers_prefix="model.language_model.layers", merger="model.multi_modal_projector",
        skip_4bit=("model.vision_tower", "model.multi_modal_projector", "lm_head"),
        vision_prefixes=("model.vision_tower", "model.multi_modal_projector", "model.image_newline"),
    ),
}


def _dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(name, name)
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return value


def _check(family: str, mode: str | None = None) -> FamilySpec:
    if family not in FAMILY_SPECS:
        raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    return FAMILY_SPECS[family]


def bnb_config(
    family: str = "llava_ov15", compute_dtype: str | torch.dtype = "bfloat16", quant_storage: str | None = None,
    quant_type: str = "nf4", double_quant: bool = True,
):
    """4-bit LLM linears (NF4 + double quantisation by default); vision tower, merger and lm_head kept out."""
    from transformers import BitsAndBytesConfig

    spec = _check(family)
    kwargs = {}
    if quant_storage is not None:  # e.g. equal to the compute dtype under DeepSpeed ZeRO-3
        kwargs["bnb_4bit_quant_storage"] = _dtype(quant_storage)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=_dtype(compute_dtype),
        llm_int8_skip_modules=list(spec.skip_4bit),
        **kwargs,
    )


def detect_family(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type == "llavaonevision1_5":
        return "llava_ov15"
    if model_type == "llava_onevision":
        return "llava_onevision"
    raise ValueError(f"not a supported family: model_type {model_type!r}")


@dataclass(frozen=True)
class LoraTargets:
    target_modules: str  # a regex PEFT matches against full module names
    modules_to_save: list[str]


def lora_target_modules(
    model_or_family: nn.Module | str, train_merger: bool = False, projections: Sequence[str] = LLM_PROJECTIONS,
    train_lm_head: bool = False,
) -> LoraTargets:
    """LLM projections only (never the vision tower, whose SigLIP also has q/k/v_proj); merger and lm_head in full
    if asked.

    ``projections`` (default q/k/v/o/gate/up/down, e.g. ``cfg.lora.target_modules``) narrows the set.
    """
    family = model_or_family if isinstance(model_or_family, str) else detect_family(model_or_family)
    spec = _check(family)
    unknown = set(projections) - set(LLM_PROJECTIONS)
    if unknown or not projections:
        raise ValueError(f"LoRA projections must be a non-empty subset of {LLM_PROJECTIONS}, got {list(projections)}")
    prefix = spec.llm_layers_prefix.replace(".", r"\.")
    attn = "|".join(p for p in LLM_PROJECTIONS if p in projections and p[0] in "qkvo")
    mlp = "|".join(p for p in LLM_PROJECTIONS if p in projections and p[0] not in "qkvo")
    parts = [f"self_attn\\.({attn})" if attn else "", f"mlp\\.({mlp})" if mlp else ""]
    regex = rf"^{prefix}\.\d+\.({'|'.join(p for p in parts if p)})$"
    return LoraTargets(regex, [spec.merger] * train_merger + ["lm_head"] * train_lm_head)


def build_lora_config(
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    train_merger: bool = False,
    family: str = "llava_ov15",
    projections: Sequence[str] = LLM_PROJECTIONS,
    train_lm_head: bool = False,
):
    from peft import LoraConfig

    targets = lora_target_modules(family, train_merger, projections, train_lm_head)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets.target_modules,
        modules_to_save=targets.modules_to_save or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def attach_lora(
    model: nn.Module,
    mode: str,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    train_merger: bool = False,
    gradient_checkpointing: bool = True,
    projections: Sequence[str] | None = None,
    train_lm_head: bool = False,
):
    """Wrap ``model`` in PEFT LoRA. Under ``qlora`` the model is first prepared for k-bit training."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if mode not in ("lora", "qlora"):
        raise ValueError(f"attach_lora needs mode lora or qlora, got {mode!r}")
    family = detect_family(model)
    if mode == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        for param in model.parameters():
            param.requires_grad_(False)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    config = build_lora_config(r, alpha, dropout, train_merger, family, projections or LLM_PROJECTIONS, train_lm_head)
    if mode == "qlora":
        keep_4bit_layout_for_training(model)
    return get_peft_model(model, config)


def keep_4bit_layout_for_training(model: nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights on a CPU eval forward; returns the layers set.

    On a CPU with AVX512-BF16, a `Linear4bit` that runs in eval mode without grad converts its weight, in place,
    to a packed layout for a faster bf16 kernel. Training steps after that still run but the gradients are wrong
    (measured on the tiny twin: one step took the loss from 7.40 to 6.79 instead of 4.84), so any eval forward
    before or between training steps (an evaluation, a sanity generate) would silently spoil the adapter. A model
    that gets adapters keeps the standard layout; evaluation-only loads keep bitsandbytes' fast path.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - bitsandbytes is a project dependency
        return 0
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def load_model_and_processor(
    path_or_name: str,
    family: str = "llava_ov15",
    mode: str = "baseline",
    torch_dtype: str = "float32",
    attn_implementation: str = "sdpa",
    compute_dtype: str = "bfloat16",
    quant_storage: str | None = None,
    device_map=None,
    quant_type: str = "nf4",
    double_quant: bool = True,
    trust_remote_code: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """Load ``(model, processor)``. ``qlora`` quantises the LLM linears to 4 bits; other modes keep ``torch_dtype``.

    ``attn_implementation``: ``sdpa`` | ``eager`` | ``flash_attention_2`` (needs flash-attn installed).
    """
    spec = _check(family, mode)
    _check_weights(path_or_name)
    # Pickled weights can run code when unpickled: only safetensors are read. The model classes are ours or
    # transformers', so trust_remote_code can only reach the tokenizer files (see load_processor).
    kwargs: dict = {"dtype": _dtype(torch_dtype), "attn_implementation": attn_implementation, "use_safetensors": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if mode == "qlora":
        kwargs["quantization_config"] = bnb_config(family, compute_dtype, quant_storage, quant_type, double_quant)
        # Unquantised modules (vision tower, merger, lm_head) run in the compute dtype.
        kwargs["dtype"] = _dtype(compute_dtype)

    if family == "llava_ov15":
        from .llava_ov15 import LlavaOV15ForConditionalGeneration

        model = LlavaOV15ForConditionalGeneration.from_pretrained(path_or_name, **kwargs)
    else:
        from transformers import LlavaOnevisionForConditionalGeneration

        model = LlavaOnevisionForConditionalGeneration.from_pretrained(path_or_name, **kwargs)
    del spec
    return model, load_processor(path_or_name, family, min_pixels, max_pixels, trust_remote_code)


def _check_weights(path_or_name: str) -> None:
    """A local checkpoint must hold safetensors weights; say so before transformers' longer message."""
    path = Path(path_or_name)
    if not path.is_dir():
        return  # a hub name: from_pretrained(use_safetensors=True) refuses pickled weights itself
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        found = f" (found {', '.join(pickled[:3])}: pickled weights are never loaded)" if pickled else ""
        raise UserError(f"{path}: no *.safetensors weights{found}")


def load_processor(path_or_name: str, family: str = "llava_ov15", min_pixels: int | None = None,
                   max_pixels: int | None = None, trust_remote_code: bool = False):
    """The processor alone (tokenizer + pixels), e.g. to measure sequence lengths without the weights."""
    try:
        if family == "llava_ov15":
            from .llava_ov15 import LlavaOV15Processor

            return LlavaOV15Processor.from_pretrained(path_or_name, min_pixels=min_pixels, max_pixels=max_pixels,
                                                      trust_remote_code=trust_remote_code)
        from .onevision import OnevisionProcessor

        return OnevisionProcessor.from_pretrained(path_or_name, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "custom code" not in str(exc):
            raise
        raise UserError(f"{path_or_name}: the checkpoint's tokenizer needs its own code (auto_map), which is not "
                        "run unless model.trust_remote_code=true") from None


def count_4bit_layers(model: nn.Module) -> int:
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - bitsandbytes is a project dependency
        return 0
    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
