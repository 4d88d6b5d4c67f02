"""Pre-training (`--tune_mm_mlp_adapter True`) checkpoints cannot be resumed.

Breaks, on every transformers version: LLaVATrainer writes only `config.json` and `mm_projector.bin`
into `checkpoint-N/` during pre-training, so the rerun that LLaVA's `train()` starts when it finds a
checkpoint (`resume_from_checkpoint=True`) fails: no `trainer_state.json`, no optimizer, and the base
Trainer finds no model weights to load ("Can't find a valid checkpoint"). A multi-hour pre-training
run that is interrupted starts from zero.
Fix: an adapter checkpoint also gets what the base Trainer writes for resuming (optimizer, scheduler,
RNG and trainer state; the model weights stay out, as LLaVA intends), and resuming from such a
checkpoint loads the projector (and any other trainable weights saved beside it) from
`mm_projector.bin`.
"""

from __future__ import annotations

import os

from . import record, recorded

NAME = "adapter_checkpoint_resume"
ADAPTER_FILE = "mm_projector.bin"


def needed() -> bool:
    return True  # LLaVA's adapter checkpoints have never held the trainer state


def is_applied() -> bool:
    from llava.train.llava_trainer import LLaVATrainer

    return recorded(LLaVATrainer, NAME)


def apply() -> bool:
    if is_applied():
        return False
    from . import save_checkpoint_signature

    save_checkpoint_signature.apply()  # wrap the fixed method, not the broken one
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import Trainer

    llava_save = LLaVATrainer._save_checkpoint
    base_load = LLaVATrainer._load_from_checkpoint

    def _save_checkpoint(self, model, trial, metrics=None):
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            # The base class saves no weights here (LLaVATrainer._save is a no-op in this mode) but
            # writes optimizer, scheduler, RNG and trainer state, and rotates old checkpoints.
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            os.makedirs(os.path.join(self._get_output_dir(trial=trial), folder), exist_ok=True)
            base_args = (model, trial) if save_checkpoint_signature.needed() else (model, trial, metrics)
            Trainer._save_checkpoint(self, *base_args)
        return llava_save(self, model, trial, metrics)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        adapter = os.path.join(resume_from_checkpoint, ADAPTER_FILE)
        if getattr(self.args, "tune_mm_mlp_adapter", False) and os.path.isfile(adapter):
            import torch

            weights = torch.load(adapter, map_location="cpu", weights_only=True)
            target = model if model is not None else self.model
            missing = set(weights) - set(dict(target.named_parameters()))
            if missing:
                raise ValueError(f"{adapter} holds weights this model does not have: {sorted(missing)[:5]}")
            target.load_state_dict(weights, strict=False)
            return
        return base_load(self, resume_from_checkpoint, model)

    LLaVATrainer._save_checkpoint = _save_checkpoint
    LLaVATrainer._load_from_checkpoint = _load_from_checkpoint
    record(LLaVATrainer, NAME)
    return True
