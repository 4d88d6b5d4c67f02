"""LoRA and QLoRA fine-tuning of AlignGPT through LLaVA's `--lora_enable` / `--bits 4`.

LLaVA's LoRA path needs three changes for AlignGPT, which `enable_lora_support` (called by
`aligngpt_training.enable_aligngpt`) and `quantized_loading_kwargs` (called by its model loader) make:

- LoRA targets: LLaVA's `find_all_linear_names` collects the leaf names of every Linear outside the
  projector and vision tower, so the gate's `Sequential` layers add the targets "0" and "2", which peft
  matches against any module ending in ".0" / ".2" (decoder layer 0, projector layers). The plugin
  targets the LLM's Linear layers by full name; the gate and the levels stay out of LoRA: they train
  (gate) or stay frozen (levels) in full precision.
- `non_lora_trainables.bin` holds the trainable non-LoRA weights (projector, gate); the frozen level
  embeddings are added, so the adapter folder alone (with the base LLM) rebuilds the model.
- QLoRA: bitsandbytes would quantise the gate's Linear layers with the LLM; the alignment module is added
  to the modules it skips, so the gate and the levels stay in fp32 (peft's k-bit preparation upcasts them).

Merging an adapter into a full checkpoint: `aligngpt_plugin.conversion.lora_merge`.
"""

from __future__ import annotations

import functools

ALIGNMENT_MODULE = "alignment"
QUANT_SKIP = f"model.{ALIGNMENT_MODULE}"
NON_LORA_FILE = "non_lora_trainables.bin"
PEFT_PREFIX = "base_model.model."
# Modules LLaVA keeps out of LoRA, plus the alignment module (levels and gate).
NOT_LORA = ("mm_projector", "vision_tower", "vision_resampler", ALIGNMENT_MODULE)


def lora_target_names(model) -> list[str]:
    """LoRA `target_modules` for LLaVA/AlignGPT: the full names of the LLM's Linear layers
    (`model.layers.0.self_attn.q_proj`, ...), leaving out the projector, the vision tower, the alignment
    module and lm_head. Full names, not LLaVA's leaf names: a leaf name such as `q_proj` would also match
    the vision tower's attention wherever it is already loaded, and the gate's "0" / "2" match any layer.

    Args:
        model: the LLaVA or AlignGPT model LoRA is put on.
    Returns:
        The module names, in `named_modules` order.
    """
    import torch

    names = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(part in NOT_LORA for part in name.split(".")):
            names.append(name)
    return [n for n in names if n.rsplit(".", 1)[-1] != "lm_head"]


def with_alignment_weights(collect):
    """`get_peft_state_non_lora_maybe_zero_3` that also collects the alignment module, trainable or not.

    Args:
        collect: LLaVA's `get_peft_state_non_lora_maybe_zero_3(named_params, require_grad_only)`.
    Returns:
        The same function, its state dict extended by every `.alignment.` weight (marked `__aligngpt__`).
    """

    @functools.wraps(collect)
    def collect_with_alignment(named_params, require_grad_only=True):
        named = list(named_params)
        state = collect(named, require_grad_only)
        state.update(collect([(k, t) for k, t in named if f".{ALIGNMENT_MODULE}." in k], False))
        return state

    collect_with_alignment.__aligngpt__ = True
    return collect_with_alignment


def enable_lora_support(llava_train) -> None:
    """Make `llava.train.train`'s LoRA path target only the LLM and save the alignment weights.

    Args:
        llava_train: the `llava.train.train` module (patched in place).
    """
    llava_train.find_all_linear_names = lora_target_names
    if not getattr(llava_train.get_peft_state_non_lora_maybe_zero_3, "__aligngpt__", False):
        llava_train.get_peft_state_non_lora_maybe_zero_3 = with_alignment_weights(
            llava_train.get_peft_state_non_lora_maybe_zero_3)


def quantized_loading_kwargs(kwargs: dict) -> dict:
    """LLaVA's `from_pretrained` kwargs for `--bits 4/8`, with the alignment module (levels and gate) added
    to the modules bitsandbytes skips, so they stay unquantised. (The `load_in_4bit` / `load_in_8bit`
    kwargs LLaVA also passes are dropped by `patches/quantized_loading_kwargs.py`.)

    Args:
        kwargs: the keyword arguments LLaVA's `train()` passes to `from_pretrained`.
    Returns:
        `kwargs`, its `quantization_config.llm_int8_skip_modules` extended in place when there is one.
    """
    quant = kwargs.get("quantization_config")
    if quant is None or not hasattr(quant, "llm_int8_skip_modules"):
        return kwargs
    skip = list(quant.llm_int8_skip_modules or [])
    # the module's full path: transformers 4.x skips a module whose name contains an entry, 5.x only one
    # whose name starts or ends with it (`should_convert_module`), and the gate's layers are model.alignment.gate.N
    if QUANT_SKIP not in skip:
        quant.llm_int8_skip_modules = [*skip, QUANT_SKIP]
    return kwargs
