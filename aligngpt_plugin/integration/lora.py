"""LoRA and QLoRA fine-tuning of AlignGPT through LLaVA's `--lora_enable` / `--bits 4`, and merging.

LLaVA's LoRA path needs three changes for AlignGPT, which `enable_lora_support` (called by
`hooks.enable_aligngpt`) and `quantized_loading_kwargs` (called by its model loader) make:

- LoRA targets: LLaVA's `find_all_linear_names` collects the leaf names of every Linear outside the
  projector and vision tower, so the gate's `Sequential` layers add the targets "0" and "2", which peft
  matches against any module ending in ".0" / ".2" (decoder layer 0, projector layers). The plugin
  targets the LLM's Linear layers by full name; the gate and the levels stay out of LoRA: they train
  (gate) or stay frozen (levels) in full precision.
- `non_lora_trainables.bin` holds the trainable non-LoRA weights (projector, gate); the frozen level
  embeddings are added, so the adapter folder alone (with the base LLM) rebuilds the model.
- QLoRA: bitsandbytes would quantise the gate's Linear layers with the LLM; the alignment module is added
  to the modules it skips, so the gate and the levels stay in fp32 (peft's k-bit preparation upcasts them).

`merge_lora` rebuilds the model from the base LLM, `non_lora_trainables.bin` and the adapter (unquantised,
also for a QLoRA adapter), merges the LoRA weights in and saves a full checkpoint that
`AutoModelForCausalLM.from_pretrained` loads as `AlignGPTLlamaForCausalLM`.
"""

from __future__ import annotations

import functools
from pathlib import Path

ALIGNMENT_MODULE = "alignment"
NON_LORA_FILE = "non_lora_trainables.bin"
PEFT_PREFIX = "base_model.model."
# Modules LLaVA keeps out of LoRA, plus the alignment module (levels and gate).
NOT_LORA = ("mm_projector", "vision_tower", "vision_resampler", ALIGNMENT_MODULE)


def lora_target_names(model) -> list[str]:
    """LoRA `target_modules` for LLaVA/AlignGPT: the full names of the LLM's Linear layers
    (`model.layers.0.self_attn.q_proj`, ...), leaving out the projector, the vision tower, the alignment
    module and lm_head. Full names, not LLaVA's leaf names: a leaf name such as `q_proj` would also match
    the vision tower's attention wherever it is already loaded, and the gate's "0" / "2" match any layer."""
    import torch

    names = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(part in NOT_LORA for part in name.split(".")):
            names.append(name)
    return [n for n in names if n.rsplit(".", 1)[-1] != "lm_head"]


def with_alignment_weights(collect):
    """`get_peft_state_non_lora_maybe_zero_3` that also collects the alignment module, trainable or not."""

    @functools.wraps(collect)
    def collect_with_alignment(named_params, require_grad_only=True):
        named = list(named_params)
        state = collect(named, require_grad_only)
        state.update(collect([(k, t) for k, t in named if f".{ALIGNMENT_MODULE}." in k], False))
        return state

    collect_with_alignment.__aligngpt__ = True
    return collect_with_alignment


def enable_lora_support(llava_train) -> None:
    """Make `llava.train.train`'s LoRA path target only the LLM and save the alignment weights."""
    llava_train.find_all_linear_names = lora_target_names
    if not getattr(llava_train.get_peft_state_non_lora_maybe_zero_3, "__aligngpt__", False):
        llava_train.get_peft_state_non_lora_maybe_zero_3 = with_alignment_weights(
            llava_train.get_peft_state_non_lora_maybe_zero_3)


def quantized_loading_kwargs(kwargs: dict) -> dict:
    """LLaVA's `from_pretrained` kwargs for `--bits 4/8`, with the alignment module (levels and gate) added
    to the modules bitsandbytes skips, so they stay unquantised. (The `load_in_4bit` / `load_in_8bit`
    kwargs LLaVA also passes are dropped by `patches/quantized_loading_kwargs.py`.)
    """
    quant = kwargs.get("quantization_config")
    if quant is None or not hasattr(quant, "llm_int8_skip_modules"):
        return kwargs
    skip = list(quant.llm_int8_skip_modules or [])
    if ALIGNMENT_MODULE not in skip:
        quant.llm_int8_skip_modules = [*skip, ALIGNMENT_MODULE]
    return kwargs


def read_non_lora_weights(adapter_dir: str | Path) -> dict:
    """`non_lora_trainables.bin` with peft's `base_model.model.` prefix removed (model-level keys)."""
    import torch

    path = Path(adapter_dir) / NON_LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {adapter_dir} is not a LoRA output of LLaVA's train() "
                                "(expected adapter_config.json, adapter_model.safetensors and non_lora_trainables.bin)")
    weights = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}


def load_lora_model(adapter_dir: str | Path, base: str | Path, torch_dtype=None):
    """The LoRA model as trained (a peft `PeftModel`, not merged) on the unquantised base LLM.

    The architecture comes from the adapter folder's `config.json` (AlignGPT or LLaVA), the LLM weights
    from `base`, the projector and alignment weights from `non_lora_trainables.bin`, the LoRA weights
    from the adapter. The vision tower is loaded from the path in the config.
    """
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    import aligngpt_plugin.integration.model  # noqa: F401  registers the AlignGPT config and model

    adapter_dir = Path(adapter_dir)
    config = AutoConfig.from_pretrained(adapter_dir)
    if hasattr(config, "quantization_config"):  # a QLoRA run: merge into the full-precision LLM
        del config.quantization_config
    model = AutoModelForCausalLM.from_pretrained(base, config=config, torch_dtype=torch_dtype)
    weights = read_non_lora_weights(adapter_dir)
    own = model.state_dict()
    unknown = sorted(k for k in weights if k not in own)
    if unknown:
        raise ValueError(f"{adapter_dir / NON_LORA_FILE} has weights this model lacks: {unknown[:4]}; was it "
                         f"trained with the same --align_levels and projector as {adapter_dir / 'config.json'}?")
    needed = [k for k in own if k.startswith(("model.mm_projector.", f"model.{ALIGNMENT_MODULE}."))]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise ValueError(f"{adapter_dir / NON_LORA_FILE} lacks {missing[:4]}: without them the merged model "
                         "would keep random weights; retrain with the plugin's train entry point")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, strict=False)
    vision = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    if vision is not None and not vision.is_loaded:
        vision.load_model()
        vision.to(dtype=model.dtype)
    return PeftModel.from_pretrained(model, adapter_dir)


def merge_lora(adapter_dir: str | Path, base: str | Path, out: str | Path, torch_dtype=None) -> Path:
    """Merge a LoRA/QLoRA output of LLaVA's train() into a full checkpoint in `out`; returns `out`."""
    from transformers import AutoTokenizer

    merged = load_lora_model(adapter_dir, base, torch_dtype).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base, use_fast=False).save_pretrained(out)
    return out
