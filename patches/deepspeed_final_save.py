"""LLaVA's final save under DeepSpeed calls `torch.cuda.synchronize()`, which fails without CUDA.

Breaks: a full fine-tuning (not `--tune_mm_mlp_adapter`) launched through DeepSpeed on a machine without
CUDA (DeepSpeed's CPU accelerator: CI, CPU nodes) trains to the end and then raises RuntimeError ("no
NVIDIA driver") in `safe_save_model_for_hf_trainer`, so the run writes no model; any version. Fix: where
CUDA is absent, the DeepSpeed branch skips the synchronize (there is no CUDA stream to wait for) and
calls `trainer.save_model` as LLaVA does; every other path is LLaVA's own function. With CUDA present
the patch does nothing.
"""

from __future__ import annotations

import functools

from . import record, recorded

NAME = "deepspeed_final_save"


def needed() -> bool:
    import torch

    return not torch.cuda.is_available()


def save_without_cuda_sync(save):
    @functools.wraps(save)
    def safe_save_model_for_hf_trainer(trainer, output_dir: str):
        if trainer.deepspeed and not getattr(trainer.args, "tune_mm_mlp_adapter", False):
            trainer.save_model(output_dir)
            return
        return save(trainer, output_dir)

    return safe_save_model_for_hf_trainer


def is_applied() -> bool:
    from llava.train import train

    return recorded(train, NAME)


def apply() -> bool:
    if is_applied() or not needed():
        return False
    from llava.train import train

    train.safe_save_model_for_hf_trainer = save_without_cuda_sync(train.safe_save_model_for_hf_trainer)
    record(train, NAME)
    return True
