"""`generate` passes keywords LLaVA's forward does not take: `cache_position` (4.38-5.3), `cache` (5.24+).

Breaks: `model.generate(...)` on a LLaVA model (eval, `run_llava`, serving) raises TypeError
"forward() got an unexpected keyword argument 'cache_position'" on transformers 4.38-5.3 (not 4.37;
from 5.4 on, `prepare_inputs_for_generation` passes it only to remote code whose forward names it;
measured: 4.57.6 and 5.0.0 fail, 5.5.4-5.23 pass neither keyword), and "... unexpected keyword argument
'cache'" on 5.24+, where `past_key_values` was renamed `cache` (the old name is accepted, with a
FutureWarning, until 5.40). Both LLaVA causal LMs
(`LlavaLlamaForCausalLM`, `LlavaMistralForCausalLM`) are hit. Fix: the forward accepts `cache_position`
and drops it (the backbone recomputes the same positions from the KV cache's length), and takes `cache`
as LLaVA's `past_key_values`, which LLaVA hands on to the backbone unchanged.
"""

from __future__ import annotations

import functools
import inspect

from . import record, recorded

NAME = "generate_cache_position"


def _targets():
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.language_model.llava_mistral import LlavaMistralForCausalLM

    return LlavaLlamaForCausalLM, LlavaMistralForCausalLM


def passes_cache_position() -> bool:
    import transformers
    from packaging.version import Version

    return Version("4.38") <= Version(transformers.__version__) < Version("5.4")


def passes_cache() -> bool:
    """transformers 5.24+ gives the KV cache to forward as `cache`."""
    from transformers import GenerationMixin

    return "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters


def needed() -> bool:
    return passes_cache_position() or passes_cache()


def is_applied() -> bool:
    return all(recorded(cls, NAME) for cls in _targets())


def accept_generate_kwargs(cls: type) -> None:
    original = cls.forward

    @functools.wraps(original)
    def forward(self, *args, cache_position=None, cache=None, **kwargs):
        if cache is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = cache
        return original(self, *args, **kwargs)

    cls.forward = forward
    record(cls, NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    for cls in _targets():
        if not recorded(cls, NAME):
            accept_generate_kwargs(cls)
    return True
