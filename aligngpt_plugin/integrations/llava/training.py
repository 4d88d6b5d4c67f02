"""The work behind `python -m aligngpt_plugin.train` (usage: `aligngpt_plugin.train`): LLaVA's `train()`
after the stack check and `patches/`, with the plugin's flags taken off the command line and switched on
(`--align_*`: AlignGPT; `--patch_align_*`: patch-aligned pre-training), the attention kernel picked
(FlashAttention-2 when `flash-attn` is installed and a GPU is present, else torch SDPA;
ALIGNGPT_ATTN_IMPLEMENTATION=flash_attention_2|sdpa|eager chooses) and every RNG seeded.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from aligngpt_plugin.core.alignment import GATE_INPUTS, GATE_TEXTS, MODES, AlignmentConfig

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


def alignment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aligngpt_plugin.train", add_help=False)
    p.add_argument("--align_levels", type=int, help="N alignment levels: trains AlignGPT instead of LLaVA")
    p.add_argument("--align_mode", choices=MODES, help="ablation mode (default adaptive)")
    p.add_argument("--align_fixed_level", type=int, help="the level for --align_mode fixed_level")
    p.add_argument("--align_gate_input", choices=GATE_INPUTS, help="fixed (public, 576 tokens) or pooled")
    p.add_argument("--align_gate_text", choices=GATE_TEXTS, help="all (public) or prompt")
    p.add_argument("--align_gate_tokens", type=int, help="image-token scores the gate reads (default 576)")
    p.add_argument("--align_gate_hidden_size", type=int, help="gate hidden width (default 256)")
    return p


def given_flags(parser: argparse.ArgumentParser, argv: list[str], prefix: str) -> tuple[dict, list[str]]:
    """The flags of `parser` that `argv` gives (names without `prefix`), and the rest of `argv` for LLaVA."""
    known, rest = parser.parse_known_args(argv)
    return {k.removeprefix(prefix): v for k, v in vars(known).items() if v is not None}, rest


def split_alignment_args(argv: list[str]) -> tuple[AlignmentConfig | None, list[str]]:
    """The AlignmentConfig asked for by the `--align_*` flags (None without --align_levels), and the rest."""
    values, rest = given_flags(alignment_parser(), argv, "align_")
    if "levels" not in values:
        if values:
            raise SystemExit(f"--align_{next(iter(values))} needs --align_levels N")
        return None, rest
    values["num_levels"] = values.pop("levels")
    return AlignmentConfig(**values), rest


def llava_model_args(argv: list[str]):
    """LLaVA's ModelArguments, read the way LLaVA's argument parser reads them."""
    from llava.train.train import ModelArguments
    from transformers import HfArgumentParser

    (model_args, _) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True)
    return model_args


def is_pretraining(argv: list[str]) -> bool:
    """LLaVA's own stage flag."""
    return bool(llava_model_args(argv).tune_mm_mlp_adapter)


def refuse_mpt(argv: list[str]) -> None:
    """LLaVA builds its MPT model for any `--model_name_or_path` containing 'mpt', past the plugin's
    AlignGPT model: that run would be plain LLaVA, so --align_levels refuses it."""
    path = llava_model_args(argv).model_name_or_path or ""
    if "mpt" in path:
        raise SystemExit(f"--align_levels with --model_name_or_path {path}: LLaVA takes the MPT path for any "
                         "name containing 'mpt', and AlignGPT runs on LLaVA's Llama and Mistral backbones only "
                         "(LLaVA's MPT keeps its LLM under `transformer`, with ALiBi attention and its own "
                         "forward). Use a Llama or Mistral checkpoint")


def seed_everything(argv: list[str]) -> int:
    """Seed every RNG with `--seed` (TrainingArguments' default 42) before LLaVA builds the model.

    LLaVA creates the projector (and the plugin the alignment module) before the HF Trainer seeds, and
    torch seeds itself randomly at start, so without this two runs with the same --seed differ.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--seed", type=int, default=42)
    seed = parser.parse_known_args(argv)[0].seed
    from transformers import set_seed

    set_seed(seed)
    return seed


def print_help() -> None:
    """The plugin's flags, then LLaVA's own (what `--help` shows)."""
    from aligngpt_plugin.integrations.llava.compat import prepare_llava
    from aligngpt_plugin.integrations.llava.patch_training import patch_alignment_parser

    print("usage: python -m aligngpt_plugin.train [the plugin's flags] [LLaVA's flags]\n")
    for title, parser in (("AlignGPT (--align_levels N switches it on)", alignment_parser()),
                          ("patch-aligned pre-training (--patch_align_weight L switches it on)",
                           patch_alignment_parser())):
        text = parser.format_help()
        print(f"{title}:{text[text.index(chr(10), text.index('options:')):]}")
    prepare_llava()
    from llava.train.train import DataArguments, ModelArguments, TrainingArguments
    from transformers import HfArgumentParser

    print("LLaVA's flags (llava/train/train.py):")
    HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).print_help()


def run_training(argv: list[str]) -> None:
    """Run LLaVA's `train()` with the command line `argv` (LLaVA's arguments plus the plugin's)."""
    from aligngpt_plugin.integrations.llava.compat import prepare_llava
    from aligngpt_plugin.patches import rewrite_argv

    if any(a in ("-h", "--help") for a in argv):
        print_help()
        return

    alignment, argv = split_alignment_args(list(argv))
    from aligngpt_plugin.integrations.llava.patch_training import split_patch_alignment_args

    patch_alignment, argv = split_patch_alignment_args(argv)  # --patch_align_* (METHOD.md section 3)
    prepare_llava()
    argv = rewrite_argv(argv)
    if alignment is not None:
        from aligngpt_plugin.integrations.llava.aligngpt_training import enable_aligngpt

        refuse_mpt(argv)
        pretraining = is_pretraining(argv)
        enable_aligngpt(alignment, pretraining)
    if patch_alignment is not None:  # after enable_aligngpt: wraps its data module and trainer
        from aligngpt_plugin.integrations.llava.patch_training import enable_patch_alignment

        try:
            enable_patch_alignment(patch_alignment, is_pretraining(argv))
        except ValueError as err:
            raise SystemExit(str(err)) from None
    attention = pick_attention()
    seed_everything(argv)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(f"[aligngpt] attention: {attention}", flush=True)
        if alignment is not None:
            stage = "pre-training (levels)" if pretraining else "instruction tuning (gate)"
            print(f"[aligngpt] AlignGPT, {alignment.num_levels} levels, {stage}, mode {alignment.mode}", flush=True)
        if patch_alignment is not None:
            print(f"[aligngpt] patch alignment, weight {patch_alignment.weight}, {patch_alignment.multi}", flush=True)

    from llava.train import train as llava_train

    saved = sys.argv
    sys.argv = ["aligngpt_plugin.train", *argv]  # LLaVA's train() parses sys.argv itself
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

