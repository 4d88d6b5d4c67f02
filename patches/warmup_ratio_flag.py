"""`--warmup_ratio` was removed from TrainingArguments in transformers 5.15; LLaVA's scripts still pass it.

Breaks: every LLaVA-1.5 training script passes `--warmup_ratio 0.03`, which transformers >= 5.15 rejects at
argument parsing ("Some specified arguments are not used by the HfArgumentParser: ['--warmup_ratio',
'0.03']"); 5.0-5.14 accept it with a deprecation warning and copy it into `warmup_steps`. Since 5.0
`warmup_steps` takes a float: a value in [0, 1) is a ratio of the total steps (`ceil(total * r)`, the same
rule as 4.x's `warmup_ratio`), a value >= 1 a step count. Fix: the plugin's `train` entry point renames
`--warmup_ratio r` to `--warmup_steps r` when the installed TrainingArguments has no `warmup_ratio` field.
As in 4.x, a positive `--warmup_steps` on the same command line wins and the ratio is dropped; a ratio of
1 (all steps) becomes 0.9999999 (`1.0` would mean one step). No attribute is patched.
"""

from __future__ import annotations

import dataclasses

OLD, NEW = "--warmup_ratio", "--warmup_steps"


def needed() -> bool:
    from transformers import TrainingArguments

    return "warmup_ratio" not in {f.name for f in dataclasses.fields(TrainingArguments)}


def is_applied() -> bool:
    return needed()  # nothing to apply ahead of time: the rename happens in rewrite_argv


def apply() -> bool:
    return False


def _split(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """`argv` without `flag` and its value, and the last value given (None when absent)."""
    out, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == flag and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(flag + "="):
            value, i = arg[len(flag) + 1:], i + 1
            continue
        out.append(arg)
        i += 1
    return out, value


def rewrite_argv(argv: list[str]) -> list[str]:
    """`argv` with `--warmup_ratio` turned into `--warmup_steps`, where the installed transformers needs it."""
    if not needed():
        return list(argv)
    rest, ratio = _split(list(argv), OLD)
    if ratio is None:
        return list(argv)
    rest, steps = _split(rest, NEW)
    if steps is not None and float(steps) > 0:
        return [*rest, NEW, steps]  # 4.x: warmup_steps > 0 overrides warmup_ratio
    if float(ratio) >= 1:
        ratio = "0.9999999"
    return [*rest, NEW, ratio]
