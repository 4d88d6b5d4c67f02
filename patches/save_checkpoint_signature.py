"""`Trainer._save_checkpoint` lost its `metrics` argument; LLaVATrainer still passes it.

Breaks: full fine-tuning (not `--tune_mm_mlp_adapter`) dies at its first checkpoint with
"_save_checkpoint() takes 3 positional arguments but 4 were given" on transformers >= 4.46 (seen on
4.57 and 5.x). Fix: LLaVATrainer keeps its adapter-only branch and calls the base class with the
arguments the installed version takes.
"""

from __future__ import annotations

import inspect

from . import record, recorded

NAME = "save_checkpoint_signature"


def needed() -> bool:
    from transformers import Trainer

    return "metrics" not in inspect.signature(Trainer._save_checkpoint).parameters


def is_applied() -> bool:
    from llava.train.llava_trainer import LLaVATrainer

    return recorded(LLaVATrainer, NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import Trainer

    llava_save = LLaVATrainer._save_checkpoint

    def _save_checkpoint(self, model, trial, metrics=None):
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            return llava_save(self, model, trial, metrics)  # this branch never calls the base class
        return Trainer._save_checkpoint(self, model, trial)

    LLaVATrainer._save_checkpoint = _save_checkpoint
    record(LLaVATrainer, NAME)
    return True
