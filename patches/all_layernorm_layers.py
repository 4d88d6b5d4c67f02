"""`ALL_LAYERNORM_LAYERS` is no longer importable from `transformers.trainer`.

Breaks: `import llava.train.llava_trainer` (and so `llava.train.train`) with ImportError on transformers
>= 4.46 (seen on 4.57 and 5.x). LLaVA uses the list to keep LayerNorm weights out of weight decay.
Fix: put the list back on `transformers.trainer`, taken from `transformers.pytorch_utils` where it
still lives. Must run before `llava.train` is imported.
"""

from __future__ import annotations

from . import record, recorded

NAME = "all_layernorm_layers"


def needed() -> bool:
    import transformers.trainer

    return recorded(transformers.trainer, NAME) or not hasattr(transformers.trainer, "ALL_LAYERNORM_LAYERS")


def is_applied() -> bool:
    import transformers.trainer

    return recorded(transformers.trainer, NAME)


def apply() -> bool:
    import transformers.trainer

    if is_applied() or not needed():
        return False
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

    transformers.trainer.ALL_LAYERNORM_LAYERS = ALL_LAYERNORM_LAYERS
    record(transformers.trainer, NAME)
    return True
