"""`Trainer._get_train_sampler` now receives the dataset; LLaVATrainer's override takes no argument.

Breaks: every `trainer.train()` with LLaVATrainer raises "_get_train_sampler() takes 1 positional
argument but 2 were given" on transformers >= 4.52 (seen on 4.57 and 5.x). Fix: the override accepts
`train_dataset=None`; for LLaVA's own training set it keeps LLaVA's modality-grouped sampler, for any
other dataset it defers to the base class.
"""

from __future__ import annotations

import inspect

from . import record, recorded

NAME = "train_sampler_signature"


def needed() -> bool:
    from transformers import Trainer

    return "train_dataset" in inspect.signature(Trainer._get_train_sampler).parameters


def is_applied() -> bool:
    from llava.train.llava_trainer import LLaVATrainer

    return recorded(LLaVATrainer, NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import Trainer

    llava_sampler = LLaVATrainer._get_train_sampler

    def _get_train_sampler(self, train_dataset=None):
        if train_dataset is None or train_dataset is self.train_dataset:
            return llava_sampler(self)
        return Trainer._get_train_sampler(self, train_dataset)

    LLaVATrainer._get_train_sampler = _get_train_sampler
    record(LLaVATrainer, NAME)
    return True
