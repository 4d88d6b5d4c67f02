"""Devices and ranks: one CPU, one GPU, torchrun on many, or independent jobs (`--rank/--world-size`)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from aligngpt_plugin.scoring.config import ScoreConfig


def resolve_device(config: ScoreConfig, local_rank: int) -> torch.device:
    """The device a rank scores on.

    Args:
        config: the run's settings (`device`: "auto" or a torch device string).
        local_rank: the rank's index on its node (its GPU under "auto").
    Returns:
        The device: `config.device` as given, else cuda:`local_rank` when CUDA is there, else the CPU.
    """
    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")

def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the model runs in under autocast.

    Args:
        precision: "auto", "fp32", "bf16" or "fp16" (`--precision`).
        device: the model's device.
    Returns:
        bf16 or fp16, or None for fp32 ("auto": bf16 on CUDA where supported, else fp16; fp32 off CUDA).
    """
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

def default_workers() -> int:
    """The CPU cores of this process shared among the ranks of this node, at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def from_environment() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, whether torch.distributed was started here) from torchrun's env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timedelta(hours=12))  # ranks wait for the slowest at the end
        return dist.get_rank(), dist.get_world_size(), local_rank, True
    return dist.get_rank(), dist.get_world_size(), local_rank, False


def barrier(device: torch.device) -> None:
    """Wait for every rank of the process group.

    Args:
        device: this rank's device (NCCL's barrier is told the GPU).
    """
    import torch.distributed as dist

    if device.type == "cuda":
        dist.barrier(device_ids=[device.index or 0])
    else:
        dist.barrier()
