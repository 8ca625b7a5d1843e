"""LLaVA-OneVision-1.5 implemented natively on transformers 5 (no remote code).

Importing this package registers ``llavaonevision1_5`` / ``rice_vit`` with transformers' Auto classes, so
``AutoConfig.from_pretrained`` and ``AutoModelForImageTextToText.from_pretrained`` resolve to the local classes.
"""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from .configuration import LlavaOV15Config, RiceViTConfig
from .modeling import LlavaOV15ForConditionalGeneration, RiceVisionModel, vision_tokens_for_grid
from .processing import LlavaOV15ImageProcessor, LlavaOV15Processor, smart_resize

for _model_type, _config in (("rice_vit", RiceViTConfig), ("llavaonevision1_5", LlavaOV15Config)):
    try:
        AutoConfig.register(_model_type, _config)
    except ValueError:  # already registered (re-import)
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
    "smart_resize",
    "vision_tokens_for_grid",
]
