"""`maybe_zero_3` imports DeepSpeed even when no parameter is partitioned.

Breaks: saving `mm_projector.bin` after pre-training, adapter checkpoints and LoRA extras raise
ModuleNotFoundError on any transformers version when DeepSpeed is not installed (CPU machines,
single-GPU runs without ZeRO). Fix: the same gather, but DeepSpeed is imported only for parameters
that ZeRO-3 partitioned (those carrying `ds_id`). Replaces the function in both modules that define it.
"""

from __future__ import annotations

import importlib
import importlib.util

from . import record, recorded

NAME = "maybe_zero_3"
TARGETS = ("llava.train.train", "llava.train.llava_trainer")


def gather_param(param, ignore_status: bool = False, name: str | None = None):
    """A CPU copy of `param`, gathered from its ZeRO-3 partitions when it has any."""
    if hasattr(param, "ds_id"):  # only ZeRO-3 tags parameters with ds_id
        from deepspeed import zero

        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def needed() -> bool:
    return importlib.util.find_spec("deepspeed") is None


def is_applied() -> bool:
    import sys

    return all(t in sys.modules and recorded(sys.modules[t], NAME) for t in TARGETS)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    from .all_layernorm_layers import apply as restore_layernorm_list

    restore_layernorm_list()  # llava.train cannot be imported without it
    for target in TARGETS:
        module = importlib.import_module(target)
        module.maybe_zero_3 = gather_param
        record(module, NAME)
    return True
