"""The work behind `python -m aligngpt_plugin.train` (usage: `aligngpt_plugin.train`): LLaVA's `train()`
after the stack check and `patches/`, with the plugin's flags taken off the command line and switched on
(each registered training feature's, `features`: `--align_*` AlignGPT, `--patch_align_*` patch-aligned
pre-training), the attention kernel picked
(FlashAttention-2 when `flash-attn` is installed and a GPU is present, else torch SDPA;
ALIGNGPT_ATTN_IMPLEMENTATION=flash_attention_2|sdpa|eager chooses) and every RNG seeded.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

# each feature module registers its feature on import, AlignGPT's first (patch alignment wraps it)
import aligngpt_plugin.integrations.llava.aligngpt_training  # noqa: F401
import aligngpt_plugin.integrations.llava.patch_training  # noqa: F401
from aligngpt_plugin.core.alignment import AlignmentConfig
from aligngpt_plugin.integrations.llava.features import TrainingRun, training_feature, training_features

ATTN_ENV = "ALIGNGPT_ATTN_IMPLEMENTATION"
ATTN_CHOICES = ("flash_attention_2", "sdpa", "eager")


def pick_attention() -> str:
    """FlashAttention-2 where it can run, else SDPA (whose flash kernels serve Ampere/Hopper GPUs)."""
    chosen = os.environ.get(ATTN_ENV)
    if chosen:
        if chosen not in ATTN_CHOICES:
            raise ValueError(f"{ATTN_ENV}={chosen!r}; choose one of {', '.join(ATTN_CHOICES)}")
        if chosen == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError(f"{ATTN_ENV}=flash_attention_2 but flash-attn is not installed: pip install flash-attn")
        return chosen
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def split_alignment_args(argv: list[str]) -> tuple[AlignmentConfig | None, list[str]]:
    """The AlignmentConfig asked for by the `--align_*` flags, and the rest of the command line.

    Args:
        argv: the command line's arguments (without the program name).
    Returns:
        (the AlignmentConfig, or None without --align_levels; the other arguments, in order).
    """
    return training_feature("aligngpt").split(argv)


def seed_everything(argv: list[str]) -> int:
    """Seed every RNG with `--seed` (TrainingArguments' default 42) before LLaVA builds the model.

    LLaVA creates the projector (and the plugin the alignment module) before the HF Trainer seeds, and
    torch seeds itself randomly at start, so without this two runs with the same --seed differ.

    Args:
        argv: the command line (only `--seed` is read).
    Returns:
        The seed used.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--seed", type=int, default=42)
    seed = parser.parse_known_args(argv)[0].seed
    from transformers import set_seed

    set_seed(seed)
    return seed


def print_help() -> None:
    """The plugin's flags, feature by feature, then LLaVA's own (what `--help` shows)."""
    from aligngpt_plugin.integrations.llava.compat import prepare_llava

    print("usage: python -m aligngpt_plugin.train [the plugin's flags] [LLaVA's flags]\n")
    for feature in training_features():
        text = feature.parser().format_help()
        print(f"{feature.title}:{text[text.index(chr(10), text.index('options:')):]}")
    prepare_llava()
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments
    from transformers import HfArgumentParser

    print("LLaVA's flags (llava/train/train.py):")
    HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).print_help()


def run_training(argv: list[str]) -> None:
    """Run LLaVA's `train()` with the command line `argv` (LLaVA's arguments plus the plugin's).

    Args:
        argv: the command line's arguments (without the program name); `-h`/`--help` prints the flags instead.
    Raises:
        SystemExit: when a feature refuses the run (its message says why).
    """
    from aligngpt_plugin.integrations.llava.compat import prepare_llava
    from aligngpt_plugin.patches import rewrite_argv

    if any(a in ("-h", "--help") for a in argv):
        print_help()
        return

    argv, chosen = list(argv), []
    for feature in training_features():  # each takes its flags off the command line: the rest is LLaVA's
        settings, argv = feature.split(argv)
        if settings is not None:
            chosen.append((feature, settings))
    prepare_llava()
    run = TrainingRun(rewrite_argv(argv))
    for feature, settings in chosen:  # in registration order: a feature wraps what those before it set
        try:
            feature.enable(settings, run)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    attention = pick_attention()
    seed_everything(run.argv)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(f"[aligngpt] attention: {attention}", flush=True)
        for feature, settings in chosen:
            print(f"[aligngpt] {feature.describe(settings, run)}", flush=True)

    from llava.train import train as llava_train

    saved = sys.argv
    sys.argv = ["aligngpt_plugin.train", *run.argv]  # LLaVA's train() parses sys.argv itself
    try:
        llava_train.train(attn_implementation=attention)
    finally:
        sys.argv = saved
    leave_process_group()


def leave_process_group() -> None:
    """Close the process group once every rank is done: a rank that exits while gloo or DeepSpeed still
    has threads on it can abort ("terminate called without an active exception") after a good run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

