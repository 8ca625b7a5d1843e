"""LLaVA-OneVision-1.5 implemented natively on transformers 5 (no remote code).

Importing this package registers ``llavaonevision1_5`` / ``rice_vit`` with transformers' Auto classes, so
``AutoConfig.from_pretrained`` and ``AutoModelForImageTextToText.from_pretrained`` resolve to the local classes, for
checkpoints of the hub layout and of the transformers-integration layout (``llava_onevision1_5``, PR #48896) alike.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration import INTEGRATION_MODEL_TYPE, LlavaOV15Config, RiceViTConfig
from .modeling import (
    LlavaOV15ForConditionalGeneration,
    RiceVisionModel,
    checkpoint_layout_conversions,
    vision_tokens_for_grid,
)
from .processing import LlavaOV15ImageProcessor, LlavaOV15Processor, smart_resize

for _model_type, _config in (("rice_vit", RiceViTConfig), ("llavaonevision1_5", LlavaOV15Config)):
    try:
        AutoConfig.register(_model_type, _config)
    except ValueError:  # already registered (re-import)
        pass
# The integration's model_type reads into our config, which writes it back as the hub's. AutoConfig.register refuses
# a class whose model_type differs, hence the mapping itself. Once transformers ships its own class under this name,
# registration fails and transformers' class wins, which is then the right one for that name.
try:
    CONFIG_MAPPING.register(INTEGRATION_MODEL_TYPE, LlavaOV15Config)
except ValueError:
    pass
for _auto in (AutoModelForImageTextToText, AutoModelForCausalLM):
    try:
        _auto.register(LlavaOV15Config, LlavaOV15ForConditionalGeneration)
    except ValueError:
        pass

__all__ = [
    "LlavaOV15Config",
    "RiceViTConfig",
    "LlavaOV15ForConditionalGeneration",
    "RiceVisionModel",
    "LlavaOV15ImageProcessor",
    "LlavaOV15Processor",
    "checkpoint_layout_conversions",
    "smart_resize",
    "vision_tokens_for_grid",
]
