"""`Trainer(tokenizer=...)` was removed in transformers 5; LLaVA's `train()` still passes it.

Breaks: `LLaVATrainer(model=..., tokenizer=tokenizer, ...)` raises TypeError (unexpected keyword
`tokenizer`) on transformers 5.x; 4.46-4.57 accept it with a deprecation warning and map it to
`processing_class`. Fix: LLaVATrainer accepts `tokenizer=` and hands it on as `processing_class`.
"""

from __future__ import annotations

import functools

from . import record, recorded

NAME = "trainer_tokenizer_kwarg"


def needed() -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__).major >= 5


def accept_tokenizer_kwarg(cls: type) -> type:
    """Give `cls.__init__` a `tokenizer=` keyword that becomes `processing_class=`."""
    if recorded(cls, NAME):
        return cls
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, tokenizer=None, **kwargs):
        if tokenizer is not None:
            if kwargs.get("processing_class") is not None:
                raise TypeError("pass either tokenizer= or processing_class=, not both")
            kwargs["processing_class"] = tokenizer
        original(self, *args, **kwargs)

    cls.__init__ = __init__
    record(cls, NAME)
    return cls


def is_applied() -> bool:
    from llava.train.llava_trainer import LLaVATrainer

    return recorded(LLaVATrainer, NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    from llava.train.llava_trainer import LLaVATrainer

    accept_tokenizer_kwarg(LLaVATrainer)
    return True
