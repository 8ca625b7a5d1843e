"""Logit parity of app.models.llava_ov15 against the published LLaVA-OneVision-1.5 reference code.

Contains no reference code: the reference package (``llavaonevision1_5/`` with its configuration and modeling
files, from the model's GitHub repo ``ds/llavaonevision1_5/``) is imported from a directory given on the command
line, in a separate environment with transformers 4.57 (the reference does not import on transformers 5).

  1. project venv:  .venv/bin/python benchmarks/parity/compare_llava_ov15_reference.py dump TINY_DIR OUT.pt
  2. parity venv:   /tmp/parity-venv/bin/python benchmarks/parity/compare_llava_ov15_reference.py \\
                        check TINY_DIR OUT.pt REF_DIR [REF_FIXED_DIR]

REF_DIR holds the unmodified reference package; REF_FIXED_DIR a copy whose one CLS-removal line reads
``hidden_states[seg_start+i:seg_end+i]`` (the published ``+1`` is right for the first segment only).
Pass: max |ours - reference| / max |ours| <= 1e-5 on fp32 logits.
"""

import json
import sys

import torch


def dump(tiny_dir, out):
    import numpy as np

    from app.models.llava_ov15 import LlavaOV15ForConditionalGeneration, LlavaOV15Processor

    model = LlavaOV15ForConditionalGeneration.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    proc = LlavaOV15Processor.from_pretrained(tiny_dir)
    rng = np.random.default_rng(0)
    q = "What colour is the moving object?"
    cases = {}
    text = proc.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
    cases["text"] = dict(proc([text]))
    img = rng.integers(0, 256, (3, 84, 112), dtype=np.uint8)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                    add_generation_prompt=True)
    cases["image"] = dict(proc([text], images=[img]))
    vid = rng.integers(0, 256, (8, 3, 56, 84), dtype=np.uint8)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}],
                                    add_generation_prompt=True)
    cases["video"] = dict(proc([text], videos=[vid]))
    results = {}
    with torch.no_grad():
        for name, batch in cases.items():
            results[name] = {"inputs": batch, "logits": model(**batch).logits}
    torch.save(results, out)


def ref_model(tiny_dir, ref_dir):
    sys.path.insert(0, ref_dir)
    for mod in [m for m in sys.modules if m.startswith("llavaonevision1_5")]:
        del sys.modules[mod]
    from llavaonevision1_5.configuration_llavaonevision1_5 import Llavaonevision1_5Config
    from llavaonevision1_5.modeling_llavaonevision1_5 import LLaVAOneVision1_5_ForConditionalGeneration
    from safetensors.torch import load_file

    sys.path.pop(0)
    cfg = json.load(open(f"{tiny_dir}/config.json"))
    t, v = cfg["text_config"], cfg["vision_config"]
    text = {k: t[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                              "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                              "max_position_embeddings", "rms_norm_eps", "attention_bias")}
    text["rope_theta"] = t["rope_parameters"]["rope_theta"]
    vision = {k: v[k] for k in ("depth", "embed_dim", "hidden_size", "hidden_act", "intermediate_size", "num_heads",
                                "in_channels", "patch_size", "spatial_merge_size", "temporal_patch_size",
                                "layer_norm_eps", "text_hidden_size")}
    config = Llavaonevision1_5Config(text_config=text, vision_config=vision, image_token_id=cfg["image_token_id"],
                                     video_token_id=cfg["video_token_id"], vocab_size=t["vocab_size"])
    config._attn_implementation = "sdpa"
    config.text_config._attn_implementation = "sdpa"
    config.vision_config._attn_implementation = "sdpa"
    model = LLaVAOneVision1_5_ForConditionalGeneration(config).eval()
    state = load_file(f"{tiny_dir}/model.safetensors")
    renamed = {}
    for k, val in state.items():
        if k.startswith("visual."):
            renamed["model." + k] = val
        elif k.startswith("model."):
            renamed["model.language_model." + k[len("model."):]] = val
        else:
            renamed[k] = val
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and not [m for m in missing if "inv_freq" not in m], (missing, unexpected)
    return model


def check(tiny_dir, out, ref_dir, ref_fixed_dir=None):
    import transformers

    print(f"reference run: torch {torch.__version__}, transformers {transformers.__version__}")
    results = torch.load(out)
    for label, directory in (("reference (as published)", ref_dir), ("reference, CLS removal fixed", ref_fixed_dir)):
        if directory is None:
            continue
        model = ref_model(tiny_dir, directory)
        with torch.no_grad():
            for name, r in results.items():
                theirs = model(**r["inputs"]).logits
                ours = r["logits"]
                rel = ((theirs - ours).abs().max() / ours.abs().max()).item()
                print(f"{label:32s} {name:6s} shape {tuple(ours.shape)}  max rel err {rel:.3e}  "
                      f"{'PASS' if rel <= 1e-5 else 'DIFFERS'}")


if __name__ == "__main__":
    {"dump": dump, "check": check}[sys.argv[1]](*sys.argv[2:])
