"""LLaVA's own training, on today's stack: takes exactly the arguments of `llava/train/train.py`.

    python -m aligngpt_plugin.train --model_name_or_path lmsys/vicuna-7b-v1.5 --version plain \
        --data_path blip_laion_cc_sbu_558k.json --image_folder images \
        --vision_tower openai/clip-vit-large-patch14-336 --mm_projector_type mlp2x_gelu \
        --tune_mm_mlp_adapter True --mm_vision_select_layer -2 --output_dir checkpoints/pretrain ...

Use it wherever LLaVA's scripts call `llava/train/train_mem.py` (with `deepspeed`, `torchrun` or plain
`python`). It checks the stack, applies `patches/`, picks the attention kernel and calls LLaVA's
`train()`. The attention kernel is FlashAttention-2 when `flash-attn` is installed and a GPU is
present, else torch SDPA; set ALIGNGPT_ATTN_IMPLEMENTATION (flash_attention_2, sdpa, eager) to choose.
"""

from __future__ import annotations

import importlib.util
import os
import sys

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


def main(argv: list[str] | None = None) -> None:
    """Run LLaVA's `train()` with `argv` (default: this process's command line)."""
    from aligngpt_plugin.compat import prepare_llava
    from aligngpt_plugin.patches import rewrite_argv

    argv = sys.argv[1:] if argv is None else list(argv)
    prepare_llava()
    argv = rewrite_argv(argv)
    attention = pick_attention()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(f"[aligngpt] attention: {attention}", flush=True)

    from llava.train import train as llava_train

    saved = sys.argv
    sys.argv = ["aligngpt_plugin.train", *argv]  # LLaVA's train() parses sys.argv itself
    try:
        llava_train.train(attn_implementation=attention)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
