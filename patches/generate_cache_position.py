"""`generate` passes `cache_position` to the model; LlavaLlamaForCausalLM.forward does not take it.

Breaks: `model.generate(...)` on a LLaVA model (eval, `run_llava`, serving) raises TypeError
"forward() got an unexpected keyword argument 'cache_position'" on transformers 4.38-4.57 (not 4.37;
5.x routes it differently). Fix: the forward accepts `cache_position` and drops it; the Llama forward
that LLaVA calls recomputes the same positions from the KV cache's length.
"""

from __future__ import annotations

import functools

from . import record, recorded

NAME = "generate_cache_position"


def _target():
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    return LlavaLlamaForCausalLM


def needed() -> bool:
    import transformers
    from packaging.version import Version

    return Version("4.38") <= Version(transformers.__version__) < Version("5")


def is_applied() -> bool:
    return recorded(_target(), NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    cls = _target()
    original = cls.forward

    @functools.wraps(original)
    def forward(self, *args, cache_position=None, **kwargs):
        return original(self, *args, **kwargs)

    cls.forward = forward
    record(cls, NAME)
    return True
