"""LLaVA's QLoRA path (`--bits 4/8`) passes `load_in_4bit`/`load_in_8bit` beside `quantization_config`.

Breaks: `train()` with `--bits 4` or `--bits 8` raises ValueError ("You can't pass `load_in_4bit`or
`load_in_8bit` as a kwarg when passing `quantization_config`") in `LlavaLlamaForCausalLM.from_pretrained`
on the transformers releases that refuse both at once (4.57 measured here; 4.37 accepted them). Fix:
`LlavaLlamaForCausalLM.from_pretrained` drops those two kwargs when a `quantization_config` is given,
which already says the same thing; without one they pass through unchanged.
"""

from __future__ import annotations

import functools
import inspect

from . import record, recorded

NAME = "quantized_loading_kwargs"
REDUNDANT = ("load_in_4bit", "load_in_8bit")


def needed() -> bool:
    from transformers import PreTrainedModel

    try:
        source = inspect.getsource(PreTrainedModel.from_pretrained)
    except (OSError, TypeError):  # no source to read: dropping redundant kwargs is harmless
        return True
    return "load_in_4bit" not in source or "You can't pass" in source


def drop_redundant_flags(kwargs: dict) -> dict:
    if kwargs.get("quantization_config") is None:
        return kwargs
    return {k: v for k, v in kwargs.items() if k not in REDUNDANT}


def is_applied() -> bool:
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    return recorded(LlavaLlamaForCausalLM, NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    original = LlavaLlamaForCausalLM.from_pretrained.__func__

    @functools.wraps(original)
    def from_pretrained(cls, *args, **kwargs):
        return original(cls, *args, **drop_redundant_flags(kwargs))

    LlavaLlamaForCausalLM.from_pretrained = classmethod(from_pretrained)
    record(LlavaLlamaForCausalLM, NAME)
    return True
