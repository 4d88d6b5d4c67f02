"""Several training processes on a machine without CUDA: the Trainer must be told `--use_cpu True`.

Breaks (transformers 4.57 with accelerate 1.x; all versions that route through accelerate's PartialState):
`torchrun --nproc_per_node 2 -m aligngpt_plugin.train ... --ddp_backend gloo` on a CPU machine. Only
`--use_cpu` makes TrainingArguments pass `cpu=True` to accelerate (`_setup_devices`); without it accelerate
finds no accelerator and picks DistributedType.NO although the gloo group is up. The Trainer then logs
"parallel_mode != ParallelMode.DISTRIBUTED", never wraps the model in DistributedDataParallel, and every
rank trains on its own shard of the data with no gradient synchronisation: the ranks end with different
weights, silently. Under `--deepspeed` accelerate counts one process, so the Trainer fills DeepSpeed's
batch for one and DeepSpeed stops: "train_batch_size is not equal to micro_batch_per_gpu *
gradient_acc_step * world_size 1 != 1 * 1 * 2". Fix: with more than one process (WORLD_SIZE > 1) and no
CUDA, the plugin's train entry point adds `--use_cpu True` unless the command line sets `--use_cpu`.
(`ACCELERATE_USE_CPU=1` would fix DDP but silently turns DeepSpeed off.) No attribute is patched.
"""

from __future__ import annotations

import os

FLAG = "--use_cpu"


def needed() -> bool:
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def is_applied() -> bool:
    return needed()  # nothing to apply ahead of time: rewrite_argv does the work


def apply() -> bool:
    return False


def rewrite_argv(argv: list[str]) -> list[str]:
    """`argv` with `--use_cpu True` added where several processes train without CUDA."""
    if not needed() or any(a == FLAG or a.startswith(FLAG + "=") for a in argv):
        return list(argv)
    return [*argv, FLAG, "True"]
