"""Merge a LoRA/QLoRA AlignGPT checkpoint into a full one.


    python -m aligngpt_plugin.lora merge checkpoints/aligngpt-7b-lora --base lmsys/vicuna-7b-v1.5 \
        --out checkpoints/aligngpt-7b-lora-merged

The LoRA support itself (targets, non_lora_trainables.bin, QLoRA loading) is
`aligngpt_plugin.integrations.llava.lora_training`.
"""

from __future__ import annotations

import argparse
import sys

from aligngpt_plugin.conversion.lora_merge import merge_lora


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aligngpt_plugin.lora", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="merge a LoRA/QLoRA checkpoint into a full one")
    merge.add_argument("adapter", help="the LoRA output folder (adapter + non_lora_trainables.bin + config.json)")
    merge.add_argument("--base", required=True, help="the base LLM it was trained on (hub id or folder)")
    merge.add_argument("--out", required=True, help="folder for the merged checkpoint")
    merge.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                       help="weights' dtype (default: the base checkpoint's)")
    args = parser.parse_args(argv)
    import torch

    dtype = getattr(torch, args.dtype) if args.dtype else None
    out = merge_lora(args.adapter, args.base, args.out, dtype)
    print(f"merged {args.adapter} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
