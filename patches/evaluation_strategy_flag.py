"""`--evaluation_strategy` was renamed `--eval_strategy`; LLaVA's scripts still pass the old flag.

Breaks: every LLaVA-1.5 training script (`pretrain.sh`, `finetune.sh`, `finetune_lora.sh`, ...) passes
`--evaluation_strategy "no"`, which transformers >= 4.46 rejects at argument parsing ("Some specified
arguments are not used by the HfArgumentParser"). Fix: the plugin's `train` entry point renames the flag
(both `--evaluation_strategy no` and `--evaluation_strategy=no`) when the installed TrainingArguments
has no such field. No attribute is patched: `apply()` does nothing, `rewrite_argv()` does the work.
"""

from __future__ import annotations

import dataclasses

OLD, NEW = "--evaluation_strategy", "--eval_strategy"


def needed() -> bool:
    from transformers import TrainingArguments

    return "evaluation_strategy" not in {f.name for f in dataclasses.fields(TrainingArguments)}


def is_applied() -> bool:
    return needed()  # nothing to apply ahead of time: the rename happens in rewrite_argv


def apply() -> bool:
    return False


def rewrite_argv(argv: list[str]) -> list[str]:
    """`argv` with the old flag renamed, where the installed transformers needs it."""
    if not needed():
        return list(argv)
    out = []
    for arg in argv:
        if arg == OLD:
            arg = NEW
        elif arg.startswith(OLD + "="):
            arg = NEW + arg[len(OLD):]
        out.append(arg)
    return out
