"""The DeepSpeed configs the reproduction scripts use, shipped inside the package.

    python -m aligngpt_plugin.deepspeed_configs zero3      # prints the path of zero3.json

- `zero2`: ZeRO stage 2 (optimizer state and gradients sharded), LLaVA-1.5's pre-training setting;
- `zero3`: ZeRO stage 3 (parameters sharded too), its fine-tuning setting;
- `zero3_offload`: ZeRO-3 with parameters and optimizer state in CPU memory, for GPUs too small for
  `zero3` (slower).

and, for `accelerate launch --config_file` (the TRL path, `python -m aligngpt_plugin.sft`), TRL's own
accelerate configs under this package's names: `accelerate_ddp` (DDP), `accelerate_zero2`, `accelerate_zero3`
(bf16, 8 processes; override with `--num_processes`, `--mixed_precision`):

    accelerate launch --config_file $(python -m aligngpt_plugin.deepspeed_configs accelerate_zero3) \\
        -m aligngpt_plugin.sft ...

Micro-batch, accumulation, clipping and bf16/fp16 are `"auto"`: the HF Trainer fills them from the
command line, so one file serves every script, GPU count and tiny CPU run. There is no
`train_batch_size`: DeepSpeed derives it (micro-batch x accumulation x its world size). A value filled
by the Trainer would be checked before DeepSpeed knows its world size under ZeRO-3's `zero.Init` on the
CPU (it falls back to 1 there), and the run would stop at the batch-size assertion.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

CONFIGS = ("zero2", "zero3", "zero3_offload")
ACCELERATE_CONFIGS = ("accelerate_ddp", "accelerate_zero2", "accelerate_zero3")


def config_path(name: str) -> Path:
    """The path of the shipped config `name` (one of CONFIGS, with or without `.json`, or one of
    ACCELERATE_CONFIGS, with or without `.yaml`)."""
    stem = name.removesuffix(".json").removesuffix(".yaml")
    if stem not in CONFIGS + ACCELERATE_CONFIGS:
        raise ValueError(f"no DeepSpeed config {name!r}; available: {', '.join(CONFIGS + ACCELERATE_CONFIGS)}")
    return Path(str(resources.files(__name__) / f"{stem}{'.yaml' if stem in ACCELERATE_CONFIGS else '.json'}"))


def load_config(name: str) -> dict:
    """The config `name` as a dict (what DeepSpeed, or for an accelerate config accelerate, reads)."""
    path = config_path(name)
    if path.suffix == ".yaml":
        import yaml

        return yaml.safe_load(path.read_text())
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> Path:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aligngpt_plugin.deepspeed_configs",
                                     description="Print the path of a shipped DeepSpeed or accelerate config.")
    parser.add_argument("name", choices=CONFIGS + ACCELERATE_CONFIGS)
    path = config_path(parser.parse_args(argv).name)
    print(path)
    return path
