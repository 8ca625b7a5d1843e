"""Model families: LLaVA-OneVision-1.5 (``llava_ov15``, default) and transformers' ``llava_onevision``.

* :mod:`app.models.llava_ov15`  the architecture (config, modeling, processor)
* :mod:`app.models.tiny`        seeded tiny twins of both families, saved in their checkpoint layouts
* :mod:`app.models.loading`     ``load_model_and_processor`` (baseline / bf16 LoRA / 4-bit QLoRA), LoRA targets
* :mod:`app.models.inspect`     parameter counts, 4-bit layers, vision tokens, memory estimate (``model inspect``)
"""
